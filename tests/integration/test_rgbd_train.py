"""RGB-D end to end as real processes on generated RGB-D folders: `segstream train --modality rgbd
--fusion early|mid`, `export` (two inputs, image and depth; DepthSpec in the metadata), ONNX against PyTorch
on the same colour + depth, `predict`/`eval` on an RGB-D folder with the .pt and the .onnx, and an RGB
frame refused."""

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
pytest.importorskip("torch")


def segstream(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return procs.run(*args, timeout=timeout, env=procs.env(OMP_NUM_THREADS="1"))


def experiment():
    spec = importlib.util.spec_from_file_location("rgbd_experiment", REPO / "tools" / "rgbd_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rgbd_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rgbd")
    exp = experiment()
    exp.generate(root / "train", 12, size=48, seed=1)
    exp.generate(root / "val", 4, size=48, seed=2)
    return root


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_train_export_predict_eval_rgbd(rgbd_data: Path, tmp_path: Path, fusion: str) -> None:
    run = tmp_path / "run"
    r = segstream(
        "train", "--data", str(rgbd_data / "train"), "--modality", "rgbd", "--fusion", fusion,
        "--epochs", "2", "--batch-size", "4", "--width", "0.5", "--depth-max-mm", "5000",
        "--out", str(run), "--threads", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    arch = "fastscnn" if fusion == "early" else "fastscnn-rgbd"
    assert f"training {arch} (RGB-D, {fusion} fusion)" in r.stderr

    import torch

    from engines.depth import DepthSpec, prepare_rgbd, read_depth
    from engines.runtime import load

    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    meta = json.loads(ck["meta"])
    assert ck["arch"] == arch and ck["arch_args"]["in_channels"] == 4 and meta["channels"] == 4
    assert DepthSpec.from_dict(meta["extra"]["depth"]) == DepthSpec(max_mm=5000.0)

    r = segstream("export", str(run / "best.pt"))
    assert r.returncode == 0, r.stderr
    onnx_path = run / "best.onnx"
    import onnx

    graph = onnx.load(str(onnx_path))
    channels = {i.name: i.type.tensor_type.shape.dim[1].dim_value for i in graph.graph.input}
    assert channels == {"image": 3, "depth": 1}  # two inputs: colour and depth
    props = {p.key: json.loads(p.value) for p in graph.metadata_props if p.key == "segstream.meta"}
    assert props["segstream.meta"]["extra"]["depth"]["max_mm"] == 5000.0

    # ONNX Runtime and PyTorch on the same real colour + depth: logits and masks agree
    names = ["00000", "00001", "00002"]
    frames = [cv2.imread(str(rgbd_data / "val" / "image" / f"{n}.png")) for n in names]
    depths = [read_depth(rgbd_data / "val" / "depth" / f"{n}.png") for n in names]
    with load(run / "best.pt", device="cpu") as pt, load(onnx_path, device="cpu") as ox:
        assert pt.meta.channels == ox.meta.channels == 4
        batch = prepare_rgbd(frames, depths, ox.meta)
        lt, lo = pt.logits(batch), ox.logits(batch)
        assert np.abs(lt - lo).max() <= 1e-3 * max(1e-3, np.abs(lt).max())
        assert np.array_equal(pt.run(batch)[0], ox.run(batch)[0])
        # other depth (everything at 4 m, as DepthSpec(5000) normalizes it): both still agree
        far = prepare_rgbd(frames, [np.full_like(d, 4000) for d in depths], ox.meta)
        assert np.allclose(far["depth"], (0.8 - 0.5) / 0.25) and np.array_equal(far["image"], batch["image"])
        assert np.abs(pt.logits(far) - ox.logits(far)).max() <= 1e-3 * max(1e-3, np.abs(lt).max())
        # an RGB frame for an RGB-D model: one clear error
        from engines.runtime.base import ShapeError

        with pytest.raises(ShapeError, match="an RGB frame, but this is an RGB-D model"):
            ox.predict(frames[:1])

    for model in (run / "best.pt", onnx_path):
        out = tmp_path / f"pred-{model.suffix[1:]}"
        images = [str(rgbd_data / "val" / "image" / f"{n}.png") for n in names[:2]]
        r = segstream("predict", "--model", str(model), *images, "--out", str(out))
        assert r.returncode == 0, r.stderr
        mask = cv2.imread(str(out / "00000_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (48, 48) and mask.max() < 3
        js = tmp_path / f"eval-{model.suffix[1:]}.json"
        r = segstream("eval", "--model", str(model), "--data", str(rgbd_data / "val"), "--json", str(js))
        assert r.returncode == 0, r.stderr
        s = json.loads(js.read_text())
        assert s["images"] == 4 and s["input_size"] == [48, 48] and 0 <= s["pixel_accuracy"] <= 1

    # the colour image alone (no depth/ folder beside it, no --depth): one line, no traceback
    lone = tmp_path / "lone.png"
    cv2.imwrite(str(lone), frames[0])
    r = segstream("predict", "--model", str(onnx_path), str(lone), "--out", str(tmp_path / "p"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "RGB-D model (4 channels: RGB + depth) and no depth was given; give --depth DIR" in r.stderr


def test_rgbd_cli_errors(rgbd_data: Path, tmp_path: Path) -> None:
    r = segstream("train", "--data", str(rgbd_data / "train"), "--modality", "rgbd", "--fusion", "mid",
                  "--arch", "unet", "--out", str(tmp_path / "r"))  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--fusion mid is built for fastscnn" in r.stderr
    r = segstream("train", "--data", str(rgbd_data / "train"), "--arch", "fastscnn-rgbd",
                  "--out", str(tmp_path / "r"))  # fmt: skip
    assert r.returncode != 0 and "give --modality rgbd" in r.stderr and "Traceback" not in r.stderr
    # a CamVid-like folder without depth/: the RGB-D loader names what is missing
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "labels").mkdir()
    (plain / "classes.json").write_text(json.dumps(experiment().CLASSES))
    r = segstream("train", "--data", str(plain), "--modality", "rgbd", "--out", str(tmp_path / "r"))
    assert r.returncode != 0 and "needs images/" in r.stderr and "depth/" in r.stderr


def test_augmenter_warps_depth_with_the_image() -> None:
    """Depth goes through the same geometric warp as image and label (nearest: no blended depth), and
    none of the photometric ones; the colour channels get exactly the batches they get without depth."""
    import torch

    from engines.data import BatchAugmenter, Normalizer

    n, h, w = 4, 40, 56
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (n, h, w)).astype(np.uint8)
    images = rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8)
    depth = torch.from_numpy(labels.astype(np.float32) * 10 + 5)  # depth tells the label exactly
    norm = Normalizer((0.5,) * 3, (0.25,) * 3, "cpu")
    aug = BatchAugmenter(("scale", "crop", "flip", "jitter"), (32, 24), 255, norm, scale_range=(0.3, 0.6))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x, y = aug(torch.from_numpy(images), torch.from_numpy(labels), g1, depth=depth, depth_fill=-1.0)
    x3, y3 = aug(torch.from_numpy(images), torch.from_numpy(labels), g2)
    assert x.shape == (n, 4, 24, 32) and torch.equal(x[:, :3], x3) and torch.equal(y, y3)
    d = x[:, 3]
    inside = y != 255
    assert inside.any() and (~inside).any()  # a 0.3-0.6 zoom leaves room around the image: padded
    assert torch.equal(d[inside], y[inside].float() * 10 + 5)  # same warp as the labels, unblended
    assert torch.all(d[~inside] == -1.0)  # padding is the fill value ("no measurement")
