"""`segstream run COLOR --depth DIR` on RGB-D models with two inputs (image, depth): real processes, the
depth paired by capture, packed by preprocess into the ring slot, unpacked by infer into the runtime's two
inputs, with batches of several frames asked for; and an RGB-D file exported before two inputs (one
4-channel 'images') through the same pipeline. Every mask must equal the model run offline on the same
colour + depth."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from tests import procs
from tests.unit.test_rgbd_inputs import SIZE, experiment, legacy_onnx, train_few_steps

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")


def segstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return procs.run(*args, timeout=timeout, env=procs.env(OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return experiment().generate(tmp_path_factory.mktemp("scenes"), 10, SIZE, seed=7)


@pytest.fixture(scope="module")
def models(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The mid-fusion model (depth feeds its own branch): a two-input export and an old 4-channel file."""
    from engines.export import export_onnx
    from engines.runtime.torch import write_checkpoint

    net, meta = train_few_steps("fastscnn-rgbd", scenes)
    out = tmp_path_factory.mktemp("models")
    export_onnx(net, meta, out / "two.onnx")
    write_checkpoint(out / "m.pt", net, meta, {"num_classes": 3, "in_channels": 4, "width": 0.5})
    return {
        "two": out / "two.onnx",
        "legacy": legacy_onnx(net, meta, out / "legacy.onnx"),
        "pt": out / "m.pt",
    }


def offline(model: Path, scenes: Path) -> list[np.ndarray]:
    from engines.depth import read_depth
    from engines.runtime import load

    names = sorted((scenes / "image").glob("*.png"))
    with load(model, device="cpu") as rt:
        frames = [cv2.imread(str(p)) for p in names]
        depths = [read_depth(scenes / "depth" / p.name) for p in names]
        return rt.predict(frames, depth=depths, full_size=True).masks


@pytest.mark.parametrize("form", ["two", "legacy"])
def test_run_with_depth_on_two_input_and_old_models(tmp_path: Path, scenes: Path, models, form: str) -> None:
    model = models[form]
    inputs = [i.name for i in onnx.load(str(model)).graph.input]
    assert inputs == (["image", "depth"] if form == "two" else ["images"])
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    r = segstream(
        "run", f"images:{scenes / 'image'}", "--depth", str(scenes / "depth"), "--model", str(model),
        "--batch", "4", "--sink", f"images:{out}?what=mask", "--no-progress", "--stats-json", str(stats),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((out / "mask").glob("*.png"))]
    want = offline(model, scenes)
    assert len(got) == len(want) == 10
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert len({m.tobytes() for m in want}) > 1  # the masks differ by scene: not a constant output
    assert json.loads(stats.read_text())["frames"] == 10


def test_explain_an_rgbd_checkpoint_over_colour_and_depth(tmp_path: Path, scenes: Path, models) -> None:
    image = scenes / "image" / "00000.png"
    r = segstream(
        "explain", "--model", str(models["pt"]), str(image), "--class", "near", "--out", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr  # the depth beside the image (../depth/00000.png) is found
    heat = cv2.imread(str(tmp_path / "00000_near_gradcam_heatmap.png"), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (48, 64) and heat.max() > 0
    lone = tmp_path / "lone.png"
    lone.write_bytes(image.read_bytes())
    r = segstream(
        "explain", "--model", str(models["pt"]), str(lone), "--class", "near", "--out", str(tmp_path)
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "RGB-D model (4 channels: RGB + depth) and no depth was given; give --depth FILE" in r.stderr
