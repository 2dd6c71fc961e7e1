"""Segmentation metrics (engines.metrics) against hand-computed answers (and torchmetrics when installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.metrics import ConfusionMatrix, ProbabilityMSE, torch_confusion

IGN = 9
TARGET = np.array([[0, 0, 1, 1], [2, 2, IGN, 0]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
# valid pairs (t, p): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0); the pixel with target 9 is ignored
EXPECTED = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_confusion_by_hand() -> None:
    cm = ConfusionMatrix(3, IGN)
    cm.update(TARGET, PRED)
    assert (cm.matrix == EXPECTED).all()
    # IoU: class 0: 2/(3+3-2)=.5; class 1: 2/(2+3-2)=2/3; class 2: 1/(2+1-1)=.5
    assert cm.iou() == pytest.approx([0.5, 2 / 3, 0.5])
    assert cm.miou() == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    assert cm.recall() == pytest.approx([2 / 3, 1.0, 0.5])
    assert cm.mean_accuracy() == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert cm.precision() == pytest.approx([2 / 3, 2 / 3, 1.0])
    f1 = [2 * p * r / (p + r) for p, r in zip(cm.precision(), cm.recall(), strict=True)]
    assert cm.f1() == pytest.approx(f1)
    s = cm.summary(["a", "b", "c"])
    assert s["macro_f1"] == pytest.approx(np.mean(f1))
    assert s["pixels"] == [3, 2, 2]


def test_absent_class_is_not_counted_in_the_mean() -> None:
    cm = ConfusionMatrix(4, None)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    assert np.isnan(cm.iou()[3]) and cm.miou() == 1.0
    assert cm.summary()["iou"][3] is None


def test_torch_confusion_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 6, (3, 17, 13), generator=g)
    t[0, 0] = 255
    p = torch.randint(0, 5, (3, 17, 13), generator=g)
    cm = ConfusionMatrix(5, 255)
    cm.update(t.numpy(), p.numpy())  # target 5 (outside 0..4) is dropped as well
    assert (torch_confusion(t, p, 5, 255).numpy() == cm.matrix).all()
    acc = ConfusionMatrix(5, 255)
    acc.add(torch_confusion(t, p, 5, 255))
    assert (acc.matrix == cm.matrix).all()


def test_probability_mse_by_hand() -> None:
    probs = torch.tensor([[[[0.5, 1.0]], [[0.5, 0.0]]]])  # 2 classes, 1x2 image
    target = torch.tensor([[[0, IGN]]])
    m = ProbabilityMSE(2, IGN)
    m.update(probs, target)
    # one valid pixel: ((0.5-1)^2 + (0.5-0)^2) / 2 classes
    assert m.value() == pytest.approx(0.25)
    m.update(probs.numpy(), target.numpy())
    assert m.value() == pytest.approx(0.25)


def test_against_torchmetrics_when_installed() -> None:
    tm = pytest.importorskip("torchmetrics", reason="torchmetrics not installed (optional cross-check)")
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 4, (2, 20, 20), generator=g)
    p = torch.where(
        torch.rand(2, 20, 20, generator=g) < 0.6, t, torch.randint(0, 4, (2, 20, 20), generator=g)
    )
    t[0, 0] = IGN
    cm = ConfusionMatrix(4, IGN)
    cm.update(t.numpy(), p.numpy())
    jac = tm.classification.MulticlassJaccardIndex(4, average=None, ignore_index=IGN)(p, t)
    assert cm.iou() == pytest.approx(jac.numpy(), abs=1e-6)
    f1 = tm.classification.MulticlassF1Score(4, average=None, ignore_index=IGN)(p, t)
    assert cm.f1() == pytest.approx(f1.numpy(), abs=1e-6)
