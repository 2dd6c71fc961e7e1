"""The one inference interface every backend implements.

A Runtime takes uint8 BGR frames (HWC, as OpenCV delivers them, any size) and returns uint8 class-id
masks and, on request, a uint8 confidence map (max softmax probability * 255).

The work is split in two steps so the pipeline can run them in different processes:
``prepare`` (resize/normalize/layout, CPU, cheap) and ``run`` (the model). ``predict`` does both and
optionally resizes masks back to each frame's size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.errors import SegstreamError
from engines.meta import ModelMeta


class RuntimeError_(SegstreamError):
    """Base for runtime errors that are the user's to fix (message is shown as-is)."""


class ModelFileError(RuntimeError_):
    """The model file is missing, corrupt, of an unknown kind, or lacks segstream metadata."""


class BackendUnavailable(RuntimeError_):
    """The backend or the device it needs (GPU, TensorRT, torch) is not usable here."""


class ShapeError(RuntimeError_):
    """Input shape outside what the model/engine accepts (e.g. outside a TensorRT profile)."""


@dataclass
class Prediction:
    masks: list[np.ndarray]  # one (h, w) uint8 class-id map per frame
    confidence: list[np.ndarray] | None = None  # one (h, w) uint8 map per frame, when asked for


class Runtime(ABC):
    """One loaded model on one backend/device."""

    backend: str = "?"
    device: str = "cpu"
    meta: ModelMeta
    #: True when ``run`` takes resized uint8 NHWC BGR and normalizes on the device itself
    wants_uint8: bool = False

    @property
    def max_batch(self) -> int:
        return self.meta.max_batch

    def input_hw(self) -> tuple[int, int]:
        w, h = self.meta.input_size
        return h, w

    def prepare(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Frames -> the batch array ``run`` takes (see engines.runtime.preprocess)."""
        from engines.runtime.preprocess import prepare_batch

        return prepare_batch(frames, self.meta, uint8=self.wants_uint8)

    @abstractmethod
    def run(self, batch: np.ndarray, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Prepared batch -> (ids (N,h,w) uint8, confidence (N,h,w) uint8 or None) at model size."""

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Prepared batch -> float32 logits (N, C, h, w). Only the uncertainty path uses it (``run_maps``);
        a backend that cannot expose them says so."""
        raise BackendUnavailable(
            f"{self.backend}: this backend gives no logits, so no entropy/margin maps (use the .pt or .onnx)"
        )

    def run_maps(self, batch: np.ndarray, maps: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Prepared batch -> (ids (N,h,w) uint8, {map: (N,h,w) uint8}) for maps among confidence, entropy,
        margin (engines.calibration). Costs a softmax over the logits on the host: ``run`` stays the
        default path and pays nothing for it."""
        from engines.calibration import maps_from_logits

        return maps_from_logits(self.logits(batch), maps)

    def predict(
        self,
        frames: Sequence[np.ndarray] | np.ndarray,
        *,
        full_size: bool = False,
        confidence: bool = False,
    ) -> Prediction:
        frames = list(frames) if not isinstance(frames, np.ndarray) or frames.ndim == 4 else [frames]
        ids_all: list[np.ndarray] = []
        conf_all: list[np.ndarray] = []
        for i in range(0, len(frames), self.max_batch):
            chunk = frames[i : i + self.max_batch]
            ids, conf = self.run(self.prepare(chunk), confidence=confidence)
            ids_all.extend(ids)
            if conf is not None:
                conf_all.extend(conf)
        if full_size:
            from engines.runtime.preprocess import resize_to

            sizes = [f.shape[:2] for f in frames]
            ids_all = [resize_to(m, hw, nearest=True) for m, hw in zip(ids_all, sizes, strict=True)]
            conf_all = [resize_to(c, hw, nearest=False) for c, hw in zip(conf_all, sizes, strict=False)]
        return Prediction(masks=ids_all, confidence=conf_all if confidence else None)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
