"""The one inference interface every backend implements.

A Runtime takes uint8 BGR frames (HWC, as OpenCV delivers them, any size) — and, for an RGB-D model,
a uint16 depth image in mm per frame — and returns uint8 class-id masks and, on request, a uint8
confidence map (max softmax probability * 255).

The work is split in two steps so the pipeline can run them in different processes:
``prepare`` (resize/normalize/layout, CPU, cheap) and ``run`` (the model). ``predict`` does both and
optionally resizes masks back to each frame's size. What ``run`` takes is a ``Batch``
(engines.runtime.inputs): one array for an RGB model, a mapping {"image", "depth"} for an RGB-D one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import SegstreamError
from engines.meta import ModelMeta

if TYPE_CHECKING:
    from engines.runtime.inputs import Batch


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

    def prepare(
        self, frames: Sequence[np.ndarray] | np.ndarray, depth: Sequence[np.ndarray] | None = None
    ) -> Batch:
        """Frames (and, for an RGB-D model, one uint16 mm depth image per frame) -> the batch ``run``
        takes (engines.runtime.preprocess, engines.depth)."""
        from engines.runtime.inputs import is_rgbd
        from engines.runtime.preprocess import prepare_batch

        if is_rgbd(self.meta):
            if depth is None:
                raise ShapeError(
                    f"an RGB frame, but this is an RGB-D model ({self.meta.channels} channels: RGB + "
                    "depth); give it depth too (predict/eval: a depth/ folder of 16-bit PNGs)"
                )
            from engines.depth import prepare_rgbd

            frames = [frames] if isinstance(frames, np.ndarray) and frames.ndim == 3 else list(frames)
            depth = [depth] if isinstance(depth, np.ndarray) and depth.ndim == 2 else list(depth)
            return prepare_rgbd(frames, depth, self.meta)
        if depth is not None:
            raise ShapeError(f"depth was given but this model takes RGB only ({self.meta.channels} channels)")
        return prepare_batch(frames, self.meta, uint8=self.wants_uint8)

    @abstractmethod
    def run(self, batch: Batch, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Prepared batch -> (ids (N,h,w) uint8, confidence (N,h,w) uint8 or None) at model size."""

    def logits(self, batch: Batch) -> np.ndarray:
        """Prepared batch -> float32 logits (N, C, h, w). Only the uncertainty path uses it (``run_maps``);
        a backend that cannot expose them says so."""
        raise BackendUnavailable(
            f"{self.backend}: this backend gives no logits, so no entropy/margin maps (use the .pt or .onnx)"
        )

    def run_maps(self, batch: Batch, maps: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
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
        depth: Sequence[np.ndarray] | None = None,
    ) -> Prediction:
        frames = list(frames) if not isinstance(frames, np.ndarray) or frames.ndim == 4 else [frames]
        if depth is not None:
            depth = [depth] if isinstance(depth, np.ndarray) and depth.ndim == 2 else list(depth)
            if len(depth) != len(frames):
                raise ShapeError(f"{len(frames)} frames but {len(depth)} depth images")
        ids_all: list[np.ndarray] = []
        conf_all: list[np.ndarray] = []
        for i in range(0, len(frames), self.max_batch):
            chunk = frames[i : i + self.max_batch]
            dchunk = None if depth is None else depth[i : i + self.max_batch]
            ids, conf = self.run(self.prepare(chunk, depth=dchunk), confidence=confidence)
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
