"""`segstream run COLOR --depth DEPTH_DIR`: an RGB-D model fed through the real pipeline (capture pairs the
depth PNG with each colour frame by index, preprocess normalizes it as the model's metadata says), with
unpaired frames counted and the model/depth mismatches refused in one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import procs

REPO = Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")


def segstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return procs.run(*args, timeout=timeout, env=procs.env(OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("rgbd_experiment", REPO / "tools" / "rgbd_experiment.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    return exp.generate(tmp_path_factory.mktemp("scenes"), 6, (64, 48), seed=3)


@pytest.fixture(scope="module")
def rgbd_onnx(tmp_path_factory: pytest.TempPathFactory, scenes: Path) -> Path:
    """A 4-channel convpool whose output depends strongly on depth (its depth weights scaled up), so a
    pipeline that fed the wrong depth, or none, gives other masks."""
    from engines.depth import DepthSpec
    from engines.export import export_onnx
    from engines.meta import ClassTable, ModelMeta
    from engines.models import build_model

    torch.manual_seed(0)
    classes = ClassTable.from_json_file(scenes / "classes.json")
    net = build_model("convpool", num_classes=3, in_channels=4).eval()
    with torch.no_grad():
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.weight[:, 3] *= 20.0
    meta = ModelMeta(
        arch="convpool",
        classes=classes,
        input_size=(64, 48),
        channels=4,
        extra={"arch_args": {"in_channels": 4}, "depth": DepthSpec(max_mm=5000.0).to_dict()},
    )
    path = tmp_path_factory.mktemp("model") / "rgbd.onnx"
    export_onnx(net, meta, path)
    return path


def offline(model: Path, scenes: Path, zero_depth: bool = False) -> list[np.ndarray]:
    from engines.depth import prepare_rgbd, read_depth
    from engines.runtime import load

    out = []
    with load(model, device="cpu") as rt:
        for img in sorted((scenes / "image").glob("*.png")):
            d = read_depth(scenes / "depth" / img.name)
            x = prepare_rgbd([cv2.imread(str(img))], [np.zeros_like(d) if zero_depth else d], rt.meta)
            out.append(rt.run(x)[0][0])
    return out


def test_run_feeds_depth_to_an_rgbd_model(tmp_path: Path, scenes: Path, rgbd_onnx: Path) -> None:
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    r = segstream(
        "run", f"images:{scenes / 'image'}", "--depth", str(scenes / "depth"), "--model", str(rgbd_onnx),
        "--sink", f"images:{out}?what=mask", "--no-progress", "--stats-json", str(stats),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((out / "mask").glob("*.png"))]
    want, without = offline(rgbd_onnx, scenes), offline(rgbd_onnx, scenes, zero_depth=True)
    assert len(got) == 6
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))  # the very depth of each frame
    assert any(not np.array_equal(w, z) for w, z in zip(want, without, strict=True))  # depth matters here
    assert json.loads(stats.read_text())["frames"] == 6


def test_unpaired_frames_are_counted(tmp_path: Path, scenes: Path, rgbd_onnx: Path) -> None:
    depth = tmp_path / "depth"
    depth.mkdir()
    for p in sorted((scenes / "depth").glob("*.png"))[:4]:  # depth for frames 0-3 only
        (depth / p.name).write_bytes(p.read_bytes())
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    r = segstream(
        "run", f"images:{scenes / 'image'}", "--depth", str(depth), "--model", str(rgbd_onnx),
        "--sink", f"images:{out}?what=mask", "--no-progress", "--stats-json", str(stats),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(stats.read_text())
    assert s["frames"] == 4 and s["drops"].get("unpaired_depth") == 2, s
    assert len(list((out / "mask").glob("*.png"))) == 4


def test_model_and_depth_mismatches_are_one_line(tmp_path: Path, scenes: Path, rgbd_onnx: Path) -> None:
    src = f"images:{scenes / 'image'}"
    r = segstream("run", src, "--model", str(rgbd_onnx), "--sink", f"images:{tmp_path / 'a'}")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "RGB-D model (4 channels: RGB + depth) and no depth was given; give --depth DEPTH_DIR" in r.stderr
    r = segstream("run", src, "--depth", str(scenes / "depth"), "--sink", f"images:{tmp_path / 'b'}")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "depth was given but this model takes RGB only" in r.stderr
    r = segstream("run", src, "--depth", str(tmp_path / "nope"), "--model", str(rgbd_onnx))
    assert r.returncode != 0 and "config key 'depth'" in r.stderr and "Traceback" not in r.stderr
