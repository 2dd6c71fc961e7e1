"""Segmentation losses with an ignore index, class weights, and weighted sums ("ce:1,dice:0.5").

Every loss takes logits (N,C,H,W) and integer targets (N,H,W); pixels equal to ``ignore_index`` take no
part. Losses are computed in float32 whatever the autocast dtype of the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import SegstreamError

LOSSES = ("ce", "mse", "dice", "focal", "ohem")
CLASS_WEIGHTS = ("none", "median", "sqrt")


class LossSpecError(SegstreamError):
    pass


def class_weights(counts: Sequence[int] | np.ndarray, mode: str) -> np.ndarray | None:
    """Per-class weights from training pixel counts.

    median: median frequency / frequency (SegNet's median-frequency balancing);
    sqrt: 1 / sqrt(frequency), scaled to mean 1. Classes absent from the data get the largest weight.
    """
    if mode in (None, "none"):
        return None
    counts = np.asarray(counts, np.float64)
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    if not present.any():
        return None
    if mode == "median":
        w = np.zeros_like(freq)
        w[present] = np.median(freq[present]) / freq[present]
    elif mode == "sqrt":
        w = np.zeros_like(freq)
        w[present] = 1.0 / np.sqrt(freq[present])
        w /= w[present].mean()
    else:
        raise LossSpecError(f"unknown class weighting '{mode}' (choose from {', '.join(CLASS_WEIGHTS)})")
    w[~present] = w[present].max()
    return w.astype(np.float32)


def _valid(target: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid &= target != ignore_index
    return valid


def _one_hot(target: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    # a comparison instead of F.one_hot, whose range check would sync a GPU every step
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
    return ((target.unsqueeze(1) == classes) & valid.unsqueeze(1)).float()


class CrossEntropy(nn.Module):
    def __init__(self, num_classes: int, ignore_index: int | None, weight: torch.Tensor | None = None):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # sum / clamped weight sum instead of reduction="mean": an all-ignored batch gives 0, not NaN,
        # and no data-dependent branch forces a device->host sync
        valid = _valid(target, self.num_classes, self.ignore_index)
        t = torch.where(valid, target, torch.zeros_like(target))
        pix = F.cross_entropy(logits.float(), t, weight=self.weight, reduction="none")
        w = valid.float() if self.weight is None else self.weight[t] * valid
        return (pix * valid).sum() / w.sum().clamp(min=1e-6)


class SoftmaxMSE(nn.Module):
    """Squared error between softmax probabilities and one-hot targets, summed over classes (Brier)."""

    def __init__(self, num_classes: int, ignore_index: int | None):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.num_classes, self.ignore_index)
        p = logits.float().softmax(1)
        err = ((p - _one_hot(target, valid, self.num_classes)) ** 2).sum(1)
        return (err * valid).sum() / valid.sum().clamp(min=1)


class Dice(nn.Module):
    """1 - mean soft Dice over the classes present in the batch target or prediction."""

    def __init__(self, num_classes: int, ignore_index: int | None, smooth: float = 1.0):
        super().__init__()
        self.num_classes, self.ignore_index, self.smooth = num_classes, ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.num_classes, self.ignore_index)
        p = logits.float().softmax(1) * valid.unsqueeze(1)
        t = _one_hot(target, valid, self.num_classes)
        inter = (p * t).sum((0, 2, 3))
        denom = p.sum((0, 2, 3)) + t.sum((0, 2, 3))
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return 1 - dice.mean()


class Focal(nn.Module):
    """Focal loss (Lin et al.): (1 - p_t)^gamma * CE, optional class weights."""

    def __init__(self, num_classes, ignore_index, weight=None, gamma: float = 2.0):
        super().__init__()
        self.num_classes, self.ignore_index, self.gamma = num_classes, ignore_index, gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = _valid(target, self.num_classes, self.ignore_index)
        t = torch.where(valid, target, torch.zeros_like(target))
        logp = F.log_softmax(logits.float(), 1).gather(1, t.unsqueeze(1)).squeeze(1)
        loss = -((1 - logp.exp()) ** self.gamma) * logp
        w = valid.float() if self.weight is None else self.weight[t] * valid
        return (loss * w).sum() / w.sum().clamp(min=1e-6)


class OhemCE(nn.Module):
    """Cross-entropy over the hardest pixels only: p_true < thresh, at least 1/16 of the valid pixels."""

    def __init__(self, num_classes, ignore_index, weight=None, thresh: float = 0.7, min_frac: float = 1 / 16):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.thresh, self.min_frac = thresh, min_frac
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ign = -100 if self.ignore_index is None else self.ignore_index
        pix = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=ign, reduction="none")
        pix = pix[_valid(target, self.num_classes, self.ignore_index)]
        if pix.numel() == 0:
            return logits.sum() * 0.0
        k = max(int(pix.numel() * self.min_frac), 1)
        hard = pix[pix > -np.log(self.thresh)]
        if hard.numel() < k:
            hard = pix.topk(k).values
        return hard.mean()


class WeightedSum(nn.Module):
    def __init__(self, terms: list[tuple[float, str, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.terms = nn.ModuleList([m for _, _, m in terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = None
        for w, m in zip(self.weights, self.terms, strict=True):
            v = w * m(logits, target)
            total = v if total is None else total + v
        return total


class DistillKL(nn.Module):
    """Knowledge distillation: pixel-wise KL(teacher || student) of softmaxes softened by a temperature.

    Multiplied by T^2 so its gradients keep their scale whatever T (Hinton et al. 2015); averaged over the
    pixels whose label is a class (void and padding outside the augmented image take no part).
    """

    def __init__(self, num_classes: int, ignore_index: int | None, temperature: float = 2.0):
        super().__init__()
        if not temperature > 0:
            raise LossSpecError(f"--distill-temp must be > 0, got {temperature}")
        self.num_classes, self.ignore_index, self.temperature = num_classes, ignore_index, float(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
        t = self.temperature
        log_s = F.log_softmax(student.float() / t, 1)
        log_t = F.log_softmax(teacher.float() / t, 1)
        kl = (log_t.exp() * (log_t - log_s)).sum(1)
        valid = _valid(target, self.num_classes, self.ignore_index)
        return (kl * valid).sum() / valid.sum().clamp(min=1) * (t * t)


def build_loss(
    spec: str,
    num_classes: int,
    ignore_index: int | None,
    weight: Sequence[float] | np.ndarray | None = None,
) -> WeightedSum:
    """'ce' | 'ce:1,dice:0.5' | ... -> one module. Class weights apply to ce, focal and ohem."""
    w = None if weight is None else torch.as_tensor(np.asarray(weight, np.float32))
    terms = []
    for part in (spec or "ce").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, factor = part.partition(":")
        name = name.strip().lower()
        try:
            factor_f = float(factor) if factor else 1.0
        except ValueError:
            raise LossSpecError(f"loss '{part}': weight '{factor}' is not a number") from None
        if name == "ce":
            m = CrossEntropy(num_classes, ignore_index, w)
        elif name == "mse":
            m = SoftmaxMSE(num_classes, ignore_index)
        elif name == "dice":
            m = Dice(num_classes, ignore_index)
        elif name == "focal":
            m = Focal(num_classes, ignore_index, w)
        elif name == "ohem":
            m = OhemCE(num_classes, ignore_index, w)
        else:
            raise LossSpecError(f"unknown loss '{name}' in '{spec}' (choose from {', '.join(LOSSES)})")
        terms.append((factor_f, name, m))
    if not terms:
        raise LossSpecError(f"empty loss spec '{spec}'")
    return WeightedSum(terms)
