"""RGB-D: 16-bit depth PNG loading in both folder layouts, normalization with invalid pixels, and the
early/mid fusion networks (generated files: no real RGB-D data set ships with the repository)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.data import DatasetError
from engines.depth import DepthSpec, RGBDDataset, read_depth, rgbd_input
from engines.models import build_model
from engines.models.fusion import rgbd_arch

REPO = Path(__file__).resolve().parents[2]


def experiment():
    spec = importlib.util.spec_from_file_location("rgbd_experiment", REPO / "tools" / "rgbd_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("color", "label"), [("image", "label"), ("images", "labels"), ("rgb", "label")])
def test_loader_reads_both_layouts(tmp_path: Path, color: str, label: str) -> None:
    root = experiment().generate(tmp_path / "d", 3, size=32, seed=5)
    if (color, label) != ("image", "label"):  # the same files in our CamVid-like layout
        (root / "image").rename(root / color)
        (root / "label").rename(root / label)
    ds = RGBDDataset.load(root)
    assert len(ds) == 3 and ds.depth.shape == (3, 32, 32) and ds.depth.dtype == np.uint16
    assert ds.rgb.images.shape == (3, 32, 32, 3) and ds.rgb.classes.names == ("wall", "near", "far")
    on_disk = cv2.imread(str(root / "depth" / "00001.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(ds.depth[1], on_disk)  # millimetres kept exactly (no 8-bit round trip)
    near = ds.rgb.labels == 1
    if near.any():  # boxes of class 'near' really are at 1.0-1.4 m (holes aside)
        d = ds.depth[near]
        assert 950 <= np.median(d[d > 0]) <= 1450


def test_normalization_and_invalid_pixels() -> None:
    spec = DepthSpec(max_mm=4000, mean=0.5, std=0.25, invalid=0.0)
    d = np.array([[0, 2000, 4000, 8000]], np.uint16)
    assert spec.normalize(d).tolist() == [[0.0, 0.0, 2.0, 2.0]]  # hole -> 0, 2 m = mean, beyond max clipped
    assert DepthSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["unit"] == "mm"
    x = rgbd_input(np.zeros((1, 1, 4, 3), np.uint8), d[None], (0.5,) * 3, (0.5,) * 3, spec)
    assert x.shape == (1, 4, 1, 4) and x.dtype == np.float32
    assert np.allclose(x[0, :3], -1.0) and x[0, 3].tolist() == [[0.0, 0.0, 2.0, 2.0]]


def test_bad_depth_files_are_named(tmp_path: Path) -> None:
    root = experiment().generate(tmp_path / "d", 2, size=32, seed=1)
    cv2.imwrite(str(root / "depth" / "00000.png"), np.zeros((32, 32), np.uint8))  # 8-bit: no millimetres
    with pytest.raises(DatasetError, match=r"00000\.png: depth must be a single-channel 16-bit PNG"):
        RGBDDataset.load(root)
    (root / "depth" / "00000.png").unlink()
    with pytest.raises(DatasetError, match=r"00000\.png: no depth image"):
        RGBDDataset.load(root)
    cv2.imwrite(str(root / "depth" / "00000.png"), np.ones((16, 32), np.uint16))
    with pytest.raises(DatasetError, match="must be the same size"):
        RGBDDataset.load(root)
    with pytest.raises(DatasetError, match="not found"):
        read_depth(tmp_path / "nope.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "classes.json").write_text(json.dumps(experiment().CLASSES))
    with pytest.raises(DatasetError, match="needs images/.*depth/"):
        RGBDDataset.load(tmp_path / "empty")


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_fusion_networks_use_depth(fusion: str) -> None:
    arch, cin = rgbd_arch("fastscnn", fusion)
    assert cin == 4 and arch == ("fastscnn" if fusion == "early" else "fastscnn-rgbd")
    torch.manual_seed(0)
    net = build_model(arch, num_classes=3, in_channels=cin, width=0.5).eval()
    x = torch.randn(2, 4, 64, 96)
    with torch.no_grad():
        y = net(x)
        x2 = x.clone()
        x2[:, 3] += 1.0  # only the depth changes
        y2 = net(x2)
    assert y.shape == (2, 3, 64, 96)
    assert (y - y2).abs().max() > 1e-2 * y.abs().max()  # the output depends on the depth channel
    if fusion == "mid":
        assert hasattr(net, "depth_branch") and hasattr(net, "fuse")


def test_mid_fusion_is_fastscnn_only() -> None:
    with pytest.raises(ValueError, match="--fusion mid is built for fastscnn"):
        rgbd_arch("unet", "mid")
    with pytest.raises(ValueError, match="--fusion 'late'"):
        rgbd_arch("fastscnn", "late")
