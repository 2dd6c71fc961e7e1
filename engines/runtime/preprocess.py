"""Frames -> model input, and masks -> frame size.

OpenCV's blob functions resize, swap BGR->RGB, scale and lay out NCHW in one native pass (about 25x
faster than the same arithmetic in NumPy, see FACTS.md). GPU runtimes take the resized uint8 frames
instead and normalize on the device, which moves 4x fewer bytes over PCIe.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from engines.meta import ModelMeta
from engines.runtime.base import ShapeError


def _as_list(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
        return [frames]
    return list(frames)


def _check_channels(frames: list[np.ndarray], channels: int, rgbd: bool = False) -> list[np.ndarray]:
    out = []
    for i, f in enumerate(frames):
        if f.dtype != np.uint8:
            raise ShapeError(f"frame {i}: dtype {f.dtype}, expected uint8")
        if f.ndim == 2 and channels == 3:  # grayscale source feeding an RGB model
            f = cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)
        c = 1 if f.ndim == 2 else f.shape[2]
        if rgbd and c == 3:
            raise ShapeError(
                f"frame {i}: an RGB frame, but this is an RGB-D model ({channels} channels: RGB + depth); "
                "give it depth too (predict/eval: a depth/ folder of 16-bit PNGs)"
            )
        if c != channels:
            raise ShapeError(f"frame {i}: {c} channels, the model takes {channels}")
        out.append(f)
    return out


def prepare_batch(
    frames: Sequence[np.ndarray] | np.ndarray,
    meta: ModelMeta,
    uint8: bool = False,
) -> np.ndarray:
    """uint8 BGR HWC frames (any size) -> model batch at ``meta.input_size``.

    ``uint8=False``: float32 NCHW, RGB, ``(x/255 - mean) / std`` — what ONNX/TensorRT graphs take.
    ``uint8=True``: uint8 NHWC BGR, only resized — the runtime normalizes on its device.
    """
    frames = _check_channels(_as_list(frames), meta.channels, rgbd="depth" in meta.extra)
    if not frames:
        raise ShapeError("empty batch: no frames given")
    w, h = meta.input_size
    if uint8:
        batch = np.empty((len(frames), h, w, meta.channels), np.uint8)
        for i, f in enumerate(frames):
            r = f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
            batch[i] = r.reshape(h, w, meta.channels)
        return batch
    return _blob(frames, meta, (w, h))


def _blob(frames: list[np.ndarray], meta: ModelMeta, size: tuple[int, int]) -> np.ndarray:
    c = meta.channels
    # blob = (pixel - mean) * scale, per channel, in the model's (RGB) channel order after swapRB
    mean = [m * 255.0 for m in meta.mean][:c] + [0.0] * (4 - min(c, 4))
    scale = [1.0 / (255.0 * s) for s in meta.std][:c] + [1.0] * (4 - min(c, 4))
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = tuple(scale[:4])
    params.size = size
    params.mean = tuple(mean[:4])
    params.swapRB = c >= 3
    params.ddepth = cv2.CV_32F
    blob = cv2.dnn.blobFromImagesWithParams(frames, params)
    return np.ascontiguousarray(blob, dtype=np.float32)


def resize_to(mask: np.ndarray, hw: tuple[int, int], nearest: bool = True) -> np.ndarray:
    """Resize a 2-D map to (h, w): nearest for class ids (never invent a class), linear for confidence."""
    h, w = int(hw[0]), int(hw[1])
    if mask.shape[:2] == (h, w):
        return mask
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(mask, (w, h), interpolation=interp)
