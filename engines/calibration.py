"""Per-pixel uncertainty maps from logits, and how well confidence predicts being right (calibration).

Maps (uint8, 0-255, one per pixel, like the confidence map):

- ``confidence``: max softmax probability * 255 (what the ONNX graph's 'confidence' output holds);
- ``entropy``: softmax entropy divided by ln(C) (so 0 = certain, 255 = uniform over the C classes);
- ``margin``: (top probability - second probability) * 255 (0 = a tie between two classes).

Calibration (Guo et al. 2017, "On calibration of modern neural networks"): pixels binned by confidence;
per bin the accuracy and the mean confidence; the expected calibration error (ECE) is the pixel-weighted
mean |accuracy - confidence| over the bins. Mean entropy on right vs wrong pixels says whether the
uncertainty map points at the errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.errors import SegstreamError

MAPS = ("confidence", "entropy", "margin")


class MapError(SegstreamError):
    """An unknown uncertainty map was asked for."""


def check_maps(maps: Sequence[str]) -> tuple[str, ...]:
    bad = [m for m in maps if m not in MAPS]
    if bad:
        raise MapError(f"unknown map(s) {', '.join(bad)} (valid: {', '.join(MAPS)})")
    return tuple(dict.fromkeys(maps))


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    z = logits.astype(np.float32, copy=False)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def probability_maps(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Softmax probabilities (N, C, H, W) -> float maps in [0, 1]: confidence, entropy (/ ln C), margin."""
    c = probs.shape[1]
    if c >= 2:
        top2 = -np.partition(-probs, 1, axis=1)[:, :2]  # the two largest, largest first
        top, second = top2[:, 0], top2[:, 1]
    else:
        top, second = probs[:, 0], np.zeros_like(probs[:, 0])
    ent = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    ent = ent / np.log(c) if c > 1 else np.zeros_like(ent)
    return {"confidence": top, "entropy": np.clip(ent, 0.0, 1.0), "margin": top - second}


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def maps_from_logits(logits: np.ndarray, maps: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits (N, C, H, W) -> (ids (N, H, W) uint8, {map: (N, H, W) uint8}) for the maps asked."""
    maps = check_maps(maps)
    probs = softmax(logits)
    ids = probs.argmax(axis=1).astype(np.uint8)
    if not maps:
        return ids, {}
    f = probability_maps(probs)
    return ids, {m: to_u8(f[m]) for m in maps}


class Calibration:
    """Accumulates (confidence, right/wrong, entropy) over labelled pixels; ``summary()`` gives the table."""

    def __init__(self, bins: int = 10) -> None:
        if bins < 1:
            raise SegstreamError(f"calibration bins {bins}: must be at least 1")
        self.bins = bins
        self.count = np.zeros(bins, np.int64)
        self.correct = np.zeros(bins, np.int64)
        self.conf_sum = np.zeros(bins, np.float64)
        self.entropy_sum = {True: 0.0, False: 0.0}
        self.entropy_n = {True: 0, False: 0}

    def update(self, confidence: np.ndarray, correct: np.ndarray, entropy: np.ndarray | None = None) -> None:
        """Confidence in [0, 1] (float) or uint8 (/255), per labelled pixel; ``correct`` bool, same shape."""
        conf = np.asarray(confidence).ravel()
        conf = conf.astype(np.float64) / 255.0 if conf.dtype == np.uint8 else conf.astype(np.float64)
        ok = np.asarray(correct, bool).ravel()
        if conf.shape != ok.shape:
            raise ValueError(f"confidence {conf.shape} and correct {ok.shape} differ in shape")
        b = np.minimum((conf * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(b, minlength=self.bins)
        self.correct += np.bincount(b, weights=ok, minlength=self.bins).astype(np.int64)
        self.conf_sum += np.bincount(b, weights=conf, minlength=self.bins)
        if entropy is not None:
            ent = np.asarray(entropy).ravel()
            ent = ent.astype(np.float64) / 255.0 if ent.dtype == np.uint8 else ent.astype(np.float64)
            for flag in (True, False):
                sel = ok == flag
                self.entropy_sum[flag] += float(ent[sel].sum())
                self.entropy_n[flag] += int(sel.sum())

    def ece(self) -> float:
        n = self.count.sum()
        if not n:
            return 0.0
        keep = self.count > 0
        acc = self.correct[keep] / self.count[keep]
        conf = self.conf_sum[keep] / self.count[keep]
        return float((self.count[keep] / n * np.abs(acc - conf)).sum())

    def summary(self) -> dict[str, Any]:
        rows = []
        for i in range(self.bins):
            n = int(self.count[i])
            rows.append(
                {
                    "lo": i / self.bins,
                    "hi": (i + 1) / self.bins,
                    "pixels": n,
                    "accuracy": float(self.correct[i] / n) if n else None,
                    "confidence": float(self.conf_sum[i] / n) if n else None,
                }
            )

        def mean_entropy(flag: bool) -> float | None:
            n = self.entropy_n[flag]
            return self.entropy_sum[flag] / n if n else None

        total = int(self.count.sum())
        return {
            "bins": rows,
            "ece": self.ece(),
            "pixels": total,
            "accuracy": float(self.correct.sum() / total) if total else None,
            "mean_confidence": float(self.conf_sum.sum() / total) if total else None,
            "mean_entropy_right": mean_entropy(True),
            "mean_entropy_wrong": mean_entropy(False),
        }
