"""What a Runtime's ``run`` takes: one batch array, or, for a model with two inputs, a mapping name -> batch.

RGB models take one ``images`` batch: float32 N x 3 x H x W, normalized as the metadata's mean/std say (or
uint8 N x H x W x 3 for a runtime that normalizes on its device, ``wants_uint8``). RGB-D models take two:
``image`` (float32 N x 3 x H x W, normalized the same way) and ``depth`` (float32 N x 1 x H x W, normalized
as the metadata's DepthSpec says, engines.depth). Every backend takes that mapping for every RGB-D model
file: one exported with the two inputs (its metadata lists them under ``extra["inputs"]``), a checkpoint,
and an ONNX file exported before two inputs existed (one 4-channel ``images`` input), which gets the two
concatenated — so such files keep working without a re-export.

Between processes (a pipeline ring slot, an inline message part) a mapping travels packed: the inputs
concatenated along the channel axis in ``layout`` order (``pack``/``unpack``) — one region and one header
field, the same bytes as a 4-channel input, and ``unpack`` returns views, not copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engines.meta import ModelMeta
from engines.runtime.base import ShapeError

IMAGES = "images"  # the one input of RGB models (and of RGB-D files exported before two inputs)
IMAGE = "image"  # RGB-D: the colour part
DEPTH = "depth"  # RGB-D: the depth part

Inputs = Mapping[str, np.ndarray]
Batch = np.ndarray | Inputs


def is_rgbd(meta: ModelMeta) -> bool:
    return isinstance(meta.extra.get("depth"), dict)


def layout(meta: ModelMeta) -> tuple[tuple[str, int], ...]:
    """(name, channels) of each input ``run`` takes for this model, in packing order."""
    if is_rgbd(meta):
        return ((IMAGE, meta.channels - 1), (DEPTH, 1))
    return ((IMAGES, meta.channels),)


def rgbd_layout(channels: int) -> list[dict]:
    """The ``extra["inputs"]`` entry of a two-input RGB-D model file."""
    return [{"name": IMAGE, "channels": channels - 1}, {"name": DEPTH, "channels": 1}]


def file_layout(meta: ModelMeta) -> tuple[tuple[str, int], ...]:
    """(name, channels) of each input the model *file* declares: its metadata's ``extra["inputs"]``
    (written by the two-input export), else one ``images`` input of ``meta.channels``."""
    declared = meta.extra.get("inputs")
    if isinstance(declared, list) and declared:
        try:
            return tuple((str(d["name"]), int(d["channels"])) for d in declared)
        except (KeyError, TypeError, ValueError):
            pass  # a malformed entry: the graph check names what the file really declares
    return ((IMAGES, meta.channels),)


def as_inputs(batch: Batch, meta: ModelMeta) -> dict[str, np.ndarray]:
    """``batch`` as {name: array} for this model, checked: the names ``layout`` gives, rank 4, one N x H x
    W for all, float NCHW channels as declared. ShapeError names what is wrong."""
    names = [n for n, _ in layout(meta)]
    if isinstance(batch, np.ndarray):
        if len(names) > 1:
            raise ShapeError(
                f"this RGB-D model takes two inputs, {{'{IMAGE}': N x 3 x H x W, '{DEPTH}': N x 1 x H x W}}, "
                f"not one {batch.dtype} array {list(batch.shape)} (prepare(frames, depth=...) makes them)"
            )
        return {names[0]: batch}
    if not isinstance(batch, Mapping):
        raise ShapeError(f"a batch is an array or a mapping name -> array, not {type(batch).__name__}")
    if sorted(batch) != sorted(names):
        raise ShapeError(f"inputs {sorted(batch)} given; this model takes {names}")
    out = {n: batch[n] for n in names}
    if len(out) == 1:
        return out
    nhw = None
    for name, channels in layout(meta):
        x = out[name]
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != channels:
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ShapeError(f"input '{name}' must be float32 N x {channels} x H x W, got {got}")
        here = (x.shape[0], *x.shape[2:])
        if nhw is not None and here != nhw:
            raise ShapeError(f"inputs disagree on N x H x W: {list(nhw)} and '{name}' {list(here)}")
        nhw = here
    return out


def batch_size(batch: Batch) -> int:
    return int((batch if isinstance(batch, np.ndarray) else next(iter(batch.values()))).shape[0])


def pack(batch: Batch, meta: ModelMeta) -> np.ndarray:
    """One array for transport: the inputs concatenated along the channel axis (axis -3), layout order."""
    if isinstance(batch, np.ndarray):
        return batch
    parts = [np.asarray(batch[n], np.float32) for n, _ in layout(meta)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-3)


def unpack(x: np.ndarray, meta: ModelMeta) -> Batch:
    """``pack``'s inverse for a model's batch (N x C x H x W): views into ``x``, no copy."""
    lay = layout(meta)
    if len(lay) == 1:
        return x
    if x.ndim != 4 or x.shape[1] != sum(c for _, c in lay):
        raise ShapeError(f"packed inputs must be N x {sum(c for _, c in lay)} x H x W, got {list(x.shape)}")
    out, at = {}, 0
    for name, c in lay:
        out[name] = x[:, at : at + c]
        at += c
    return out


def feed(inputs: Mapping[str, np.ndarray], file_names: Sequence[str]) -> dict[str, np.ndarray]:
    """What the file's graph/engine takes, from ``as_inputs``' mapping: the same mapping, or, for an RGB-D
    file with one 4-channel ``images`` input (exported before two inputs), image and depth concatenated.
    Every array is C-contiguous float32 (or the uint8 batch as given)."""
    names = list(file_names)
    if sorted(inputs) == sorted(names):
        return {n: np.ascontiguousarray(inputs[n]) for n in names}
    if names == [IMAGES] and sorted(inputs) == sorted((IMAGE, DEPTH)):
        return {IMAGES: np.concatenate([inputs[IMAGE], inputs[DEPTH]], axis=1, dtype=np.float32)}
    raise ShapeError(f"inputs {sorted(inputs)} given; the model file takes {names}")


def zeros(meta: ModelMeta, n: int = 1, hw: tuple[int, int] | None = None) -> Batch:
    """A blank float32 batch of ``n`` at (h, w) (default: the metadata's input size) in ``layout``'s form."""
    h, w = hw or meta.input_size[::-1]
    lay = layout(meta)
    arrays = {name: np.zeros((n, c, h, w), np.float32) for name, c in lay}
    return arrays[lay[0][0]] if len(lay) == 1 else arrays
