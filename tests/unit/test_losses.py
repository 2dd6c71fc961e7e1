"""Every loss: value against hand/reference computations, ignore index, gradients, weighted sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.losses import LOSSES, LossSpecError, build_loss, class_weights

C, IGN = 4, 255


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, 6, 5, generator=g, requires_grad=True)
    target = torch.randint(0, C, (2, 6, 5), generator=g)
    target[0, :2] = IGN
    return logits, target


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_ignores_void_pixels_and_backprops(name: str) -> None:
    logits, target = _batch()
    loss = build_loss(name, C, IGN)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    grad = logits.grad
    assert grad[0, :, :2].abs().max() == 0  # ignored pixels get no gradient
    assert grad.abs().sum() > 0
    # changing logits at ignored pixels leaves the loss unchanged
    other = logits.detach().clone()
    other[0, :, :2] += 5.0
    assert torch.allclose(build_loss(name, C, IGN)(other, target), loss.detach(), atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_prefers_the_right_answer(name: str) -> None:
    _, target = _batch()
    good = F.one_hot(target.clamp(max=C - 1), C).permute(0, 3, 1, 2).float() * 8
    bad = torch.roll(good, 1, dims=1)
    fn = build_loss(name, C, IGN)
    assert fn(good, target) < fn(bad, target)


def test_cross_entropy_matches_torch_with_weights() -> None:
    logits, target = _batch(1)
    w = torch.tensor([0.5, 1.0, 2.0, 3.0])
    ours = build_loss("ce", C, IGN, w.numpy())(logits, target)
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=IGN)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_all_ignored_batch_is_zero_not_nan() -> None:
    logits = torch.randn(1, C, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), IGN)
    for name in LOSSES:
        v = build_loss(name, C, IGN)(logits, target)
        assert torch.isfinite(v), name


def test_mse_and_dice_by_hand() -> None:
    # one pixel, two classes, probabilities (0.5, 0.5), target 0: squared error 0.25 + 0.25
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    assert build_loss("mse", 2, None)(logits, target).item() == pytest.approx(0.5)
    # Dice (smooth 1): class 0: (2*0.5+1)/(0.5+1+1) = 0.8; class 1: (0+1)/(0.5+0+1) = 2/3
    assert build_loss("dice", 2, None)(logits, target).item() == pytest.approx(1 - (0.8 + 2 / 3) / 2)


def test_focal_is_ce_scaled_by_hardness() -> None:
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # p(class 0) = 0.8808
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    p = torch.softmax(logits, 1)[0, 0, 0, 0]
    expect = -((1 - p) ** 2) * torch.log(p)
    assert build_loss("focal", 2, None)(logits, target).item() == pytest.approx(expect.item(), rel=1e-5)


def test_weighted_sum_spec() -> None:
    logits, target = _batch(2)
    combo = build_loss("ce:1,dice:0.5", C, IGN)(logits, target)
    ce = build_loss("ce", C, IGN)(logits, target)
    dice = build_loss("dice", C, IGN)(logits, target)
    assert torch.allclose(combo, ce + 0.5 * dice)
    with pytest.raises(LossSpecError, match="unknown loss 'hinge'"):
        build_loss("ce,hinge", C, IGN)
    with pytest.raises(LossSpecError, match="not a number"):
        build_loss("ce:x", C, IGN)


def test_class_weights_by_hand() -> None:
    counts = [10, 20, 70, 0]
    med = class_weights(counts, "median")
    # frequencies .1 .2 .7 -> median .2 -> .2/f; the absent class gets the largest weight
    assert med == pytest.approx([2.0, 1.0, 0.2 / 0.7, 2.0])
    sq = class_weights(counts, "sqrt")
    raw = 1 / np.sqrt([0.1, 0.2, 0.7])
    assert sq[:3] == pytest.approx(raw / raw.mean())
    assert class_weights(counts, "none") is None
    with pytest.raises(LossSpecError):
        class_weights(counts, "bogus")
