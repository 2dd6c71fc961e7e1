"""The depth-is-necessary experiment (tools/rgbd_experiment.py), small enough for the test suite: near and
far boxes of identical colour, texture and size; the same network and budget on RGB and on RGB-D (early
fusion). RGB-D must separate the two classes, RGB must find the boxes and still be at chance between them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")

RGBD_MIN_IOU = 0.8  # RGB-D: IoU of near and of far each at least this (measured ~0.93-0.95)
CHANCE_SEPARATION = 0.65  # RGB: share of box pixels put in the right one of near/far (0.5 = coin toss)


def experiment():
    spec = importlib.util.spec_from_file_location("rgbd_experiment", REPO / "tools" / "rgbd_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generation_is_deterministic(tmp_path: Path) -> None:
    exp = experiment()
    a, b = exp.generate(tmp_path / "a", 3, seed=4), exp.generate(tmp_path / "b", 3, seed=4)
    for sub in ("image", "label", "depth"):
        for f in sorted((a / sub).iterdir()):
            x = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            assert x.shape[:2] == (48, 64) and np.array_equal(x, cv2.imread(str(b / sub / f.name), -1))


def test_depth_is_necessary(tmp_path: Path) -> None:
    exp = experiment()
    torch.set_num_threads(1)
    tr = exp.generate(tmp_path / "train", 64, seed=1)
    va = exp.generate(tmp_path / "val", 16, seed=2)
    # both classes are large in the validation split (a test of near/far needs both present)
    labels = np.stack([cv2.imread(str(p), -1) for p in sorted((va / "label").iterdir())])
    assert (labels == 1).mean() > 0.05 and (labels == 2).mean() > 0.05
    rgb = exp.train_and_eval(tr, va, "rgb", steps=100)
    rgbd = exp.train_and_eval(tr, va, "rgbd", "early", steps=100)
    assert rgb["steps"] == rgbd["steps"] == 100 and rgb["arch"] == rgbd["arch"] == "convpool"
    # RGB-D tells near from far
    assert rgbd["iou"]["near"] >= RGBD_MIN_IOU and rgbd["iou"]["far"] >= RGBD_MIN_IOU, rgbd
    assert rgbd["near_far_separation"] >= 0.9, rgbd
    # RGB learned the scene (the wall/box boundary: it is not failing for want of training) ...
    assert rgb["iou"]["wall"] >= 0.9, rgb
    # ... and still cannot tell the two boxes apart: a coin toss between near and far
    assert rgb["near_far_separation"] <= CHANCE_SEPARATION, rgb
    assert min(rgb["iou"]["near"], rgb["iou"]["far"]) < 0.5, rgb
