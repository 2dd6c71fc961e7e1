"""Tiled inference through the real pipeline: `segstream run` processes, shared-memory ring, sockets, files.

The model is a real ONNX graph whose correct mask is known at every pixel (a per-pixel colour
classifier, tests/unit/tiling_models.py), so the masks the pipeline writes must equal the truth exactly,
at the frame's full resolution, with any seam or offset error in preprocess, infer or stitching showing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.procs import run, start
from tests.unit import tiling_models as tm

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> tuple[Path, Path, list[np.ndarray]]:
    """Three 517x301 mosaics (PNG: lossless, the colours stay pure), the colour model, and the truths."""
    root = tmp_path_factory.mktemp("tiled")
    frames = root / "frames"
    frames.mkdir()
    truths = []
    for i in range(3):
        img, ids = tm.block_mosaic(301, 517, seed=10 + i, palette=tm.COLORS_BGR)
        cv2.imwrite(str(frames / f"{i:03d}.png"), img)
        truths.append(ids)
    return frames, tm.color_model(root), truths


def read_masks(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))]


def test_pipeline_tiled_masks_are_exact_at_full_resolution(mosaics, tmp_path: Path) -> None:
    frames, model, truths = mosaics
    out = run(
        "run", f"images:{frames}", "--model", str(model), "--infer-mode", "tiled",
        "--sink", f"images:{tmp_path / 'o'}?what=mask", "--stats-json", str(tmp_path / "s.json"),
        "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    masks = read_masks(tmp_path / "o" / "mask")
    assert len(masks) == 3
    for m, t in zip(masks, truths, strict=True):
        assert m.shape == (301, 517)
        assert np.array_equal(m, t), f"{int((m != t).sum())} pixels differ"
    assert json.loads((tmp_path / "s.json").read_text())["frames"] == 3


def test_pipeline_run_config_file_selects_tiled_mode(mosaics, tmp_path: Path) -> None:
    """`--config FILE` (TOML) sets the mode; the same run without it (scaled) is measurably wrong,
    so the exact masks can only come from the file's setting."""
    frames, model, truths = mosaics
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'model = "{model}"\ninfer_mode = "tiled"\ntile_overlap = 0.25\n')
    sink = f"images:{tmp_path / 'o'}?what=mask"
    out = run("run", f"images:{frames}", "--config", str(cfg), "--sink", sink, "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert all(np.array_equal(m, t) for m, t in zip(read_masks(tmp_path / "o" / "mask"), truths, strict=True))
    sink2 = f"images:{tmp_path / 'p'}?what=mask"
    out = run(
        "run", f"images:{frames}", "--model", str(model), "--sink", sink2, "--no-progress", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    scaled = read_masks(tmp_path / "p" / "mask")
    assert scaled[0].shape == (301, 517) and (scaled[0] == truths[0]).mean() < 0.95


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--infer-mode", "tiled", "--infer-scale", "0"], "'infer_scale' = 0.0"),
        (["--infer-scale", "0.5"], "'infer_scale' = 0.5: applies to infer_mode 'tiled' only"),
        (["--config", "{tmp}/missing.toml"], "config file not found"),
        (["--config", "{tmp}/bad.toml"], "key 'infer_mod' = 'tiled': unknown key"),
        (["--config", "{tmp}/typo.json"], "not valid JSON"),
    ],
)
def test_bad_tiling_options_and_config_files_get_one_line(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    (tmp_path / "bad.toml").write_text('infer_mod = "tiled"\n')
    (tmp_path / "typo.json").write_text('{"infer_mode": "tiled",}')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = run("run", "--max-frames", "1", *args, "--no-progress", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_remote_infer_worker_tiles_what_the_header_says(mosaics, tmp_path: Path) -> None:
    """A `segstream worker infer` on "another host" is started with no tiling option at all: the frames'
    headers tell it they are tiled (and with what overlap), so its masks are exact too."""
    from stream.transport import free_tcp_port

    frames, model, truths = mosaics
    p_in, p_out = free_tcp_port(), free_tcp_port()
    worker = start(
        "worker", "infer", "--in", f"tcp://127.0.0.1:{p_in}", "--out", f"tcp://127.0.0.1:{p_out}",
        "--model", model, "--threads", "1",
        cwd=tmp_path, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = run(
            "run", f"images:{frames}", "--model", str(model), "--infer-mode", "tiled",
            "--sink", f"images:{tmp_path / 'o'}?what=mask", "--no-progress", "--workers", "0",
            "--remote-infer", f"tcp://127.0.0.1:{p_in}", f"tcp://127.0.0.1:{p_out}", cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else "worker died"
    finally:
        worker.terminate()
        worker.wait(10)
    masks = read_masks(tmp_path / "o" / "mask")
    assert len(masks) == 3
    assert all(np.array_equal(m, t) for m, t in zip(masks, truths, strict=True))


def test_eval_and_predict_measure_each_mode(camvid: Path, tmp_path: Path) -> None:
    """`segstream eval --infer-mode` scores the mode it is given (the JSON says which), and `predict`
    writes the tiled mask at the image's full size."""
    data = str(camvid / "val")
    figures = {}
    for mode in ("scaled", "tiled"):
        js = tmp_path / f"{mode}.json"
        out = run(
            "eval", "--data", data, "--size", "960x720", "--limit", "2", "--warmup", "0",
            "--infer-mode", mode, "--json", str(js), cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        figures[mode] = json.loads(js.read_text())
        assert figures[mode]["infer_mode"]["mode"] == mode
    assert figures["tiled"]["miou"] != figures["scaled"]["miou"]  # 9 tiles a frame vs one resize
    img = sorted((camvid / "val" / "images").glob("*.jpg"))[0]
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(img)), (960, 720)))
    out = run("predict", str(big), "--out", "p", "--infer-mode", "tiled", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert cv2.imread(str(tmp_path / "p" / "big_mask.png"), cv2.IMREAD_UNCHANGED).shape == (720, 960)
