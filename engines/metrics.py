"""Segmentation metrics from one confusion matrix (rows = true class, columns = predicted class).

Pixels whose target is the ignore index (or outside 0..C-1) are excluded. ``torch_confusion`` builds the
matrix on the training device with one bincount so validation never copies masks to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, target: np.ndarray, pred: np.ndarray) -> None:
        """Add integer arrays of the same shape (any layout)."""
        t = np.asarray(target).ravel().astype(np.int64)
        p = np.asarray(pred).ravel().astype(np.int64)
        if t.shape != p.shape:
            raise ValueError(f"target {np.shape(target)} and prediction {np.shape(pred)} differ in shape")
        keep = (t >= 0) & (t < self.num_classes) & (p >= 0) & (p < self.num_classes)
        if self.ignore_index is not None:
            keep &= t != self.ignore_index
        c = self.num_classes
        self.matrix += np.bincount(t[keep] * c + p[keep], minlength=c * c).reshape(c, c)

    def add(self, matrix: Any) -> None:
        """Add a matrix computed elsewhere (e.g. ``torch_confusion`` on a GPU)."""
        if hasattr(matrix, "detach"):
            matrix = matrix.detach().cpu().numpy()
        self.matrix += np.asarray(matrix, np.int64)

    # ---- per-class figures (NaN where undefined: class absent from both target and prediction)
    @property
    def tp(self) -> np.ndarray:
        return np.diag(self.matrix)

    def iou(self) -> np.ndarray:
        m = self.matrix
        return _div(self.tp, m.sum(0) + m.sum(1) - self.tp)

    def precision(self) -> np.ndarray:
        return _div(self.tp, self.matrix.sum(0))

    def recall(self) -> np.ndarray:
        return _div(self.tp, self.matrix.sum(1))

    def f1(self) -> np.ndarray:
        m = self.matrix
        return _div(2 * self.tp, m.sum(0) + m.sum(1))

    # ---- summaries
    def miou(self) -> float:
        v = self.iou()
        return float(np.nanmean(v)) if np.isfinite(v).any() else 0.0

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.tp.sum() / total) if total else 0.0

    def mean_accuracy(self) -> float:
        v = self.recall()
        return float(np.nanmean(v)) if np.isfinite(v).any() else 0.0

    @staticmethod
    def _macro(v: np.ndarray) -> float:
        return float(np.nanmean(v)) if np.isfinite(v).any() else 0.0

    def summary(self, names: list[str] | None = None) -> dict[str, Any]:
        names = names or [str(i) for i in range(self.num_classes)]

        def lst(v: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(x) else float(x) for x in v]

        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_accuracy": self.mean_accuracy(),
            "macro_precision": self._macro(self.precision()),
            "macro_recall": self._macro(self.recall()),
            "macro_f1": self._macro(self.f1()),
            "classes": names,
            "iou": lst(self.iou()),
            "precision": lst(self.precision()),
            "recall": lst(self.recall()),
            "f1": lst(self.f1()),
            "pixels": [int(x) for x in self.matrix.sum(1)],
            "confusion": self.matrix.tolist(),
        }


def torch_confusion(target, pred, num_classes: int, ignore_index: int | None = None):
    """C x C int64 confusion matrix of two integer tensors on their own device (no host sync)."""
    import torch

    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    # ignored pixels go to an extra bin that is dropped, so no boolean indexing (which would sync)
    idx = torch.where(keep, t * num_classes + p, torch.full_like(t, num_classes * num_classes))
    return torch.bincount(idx, minlength=num_classes * num_classes + 1)[:-1].view(num_classes, num_classes)


class ProbabilityMSE:
    """Mean squared error between softmax probabilities and one-hot targets over valid pixels and classes."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.sum = 0.0
        self.count = 0
        self._pending: list = []

    def update(self, probs, target) -> None:
        """probs (N,C,H,W) torch/numpy, target (N,H,W) ints; sums stay on the device until value()."""
        import torch

        if isinstance(probs, np.ndarray):
            probs, target = torch.from_numpy(probs), torch.from_numpy(np.asarray(target))

        t = target.long()
        valid = (t >= 0) & (t < self.num_classes)
        if self.ignore_index is not None:
            valid &= t != self.ignore_index
        classes = torch.arange(self.num_classes, device=t.device).view(1, -1, 1, 1)
        oh = (t.unsqueeze(1) == classes).float()  # not F.one_hot: its range check syncs a GPU
        err = ((probs.float() - oh) ** 2).sum(1) * valid
        self._pending.append((err.sum().double(), valid.sum()))

    def value(self) -> float:
        for s, c in self._pending:
            self.sum += float(s)
            self.count += int(c) * self.num_classes
        self._pending.clear()
        return self.sum / self.count if self.count else 0.0
