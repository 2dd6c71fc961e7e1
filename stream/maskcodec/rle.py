"""COCO run-length encoding of class-id masks, vectorized with NumPy.

COCO RLE ("compressed RLE", as pycocotools writes it): a binary mask read in column-major order as
alternating run lengths, starting with a run of 0s (possibly empty), each length written as a
LEB128-like string of 6-bit characters (offset 48) with the lengths from the third on stored as the
difference to the length two before. This module computes the runs of every class from one pass
over the class-id mask (not one pass per class) and packs/unpacks the strings without a Python loop
per run, so encoding a whole frame costs about what one pycocotools call on one binary mask costs.
"""

from __future__ import annotations

import numpy as np

_MAX_CHUNKS = 13  # 64-bit values need at most 13 five-bit chunks


class RleError(ValueError):
    """A COCO RLE string or counts list that cannot describe the announced mask."""


def value_runs(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, values) of the runs of equal values of ``image`` in column-major order."""
    flat = np.ascontiguousarray(image.T).reshape(-1)
    if flat.size == 0:
        return (np.zeros(0, np.int64),) * 2 + (flat[:0],)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], starts)).astype(np.int64)
    lengths = np.diff(np.append(starts, flat.size))
    return starts, lengths, flat[starts]


def counts_for(
    starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, value: int, total: int
) -> np.ndarray:
    """COCO counts (0-run, 1-run, 0-run, ...) of the binary mask ``image == value`` from its value runs."""
    sel = values == value
    s, n = starts[sel], lengths[sel]
    if s.size == 0:
        return np.array([total], np.int64)
    ends = s + n
    # adjacent runs of the same value never occur in value_runs(), so gaps between them are > 0
    # (except the first, which is 0 when the mask starts with the value)
    gaps = np.empty(s.size + 1, np.int64)
    gaps[0] = s[0]
    gaps[1:-1] = s[1:] - ends[:-1]
    gaps[-1] = total - ends[-1]
    out = np.empty(2 * s.size + 1, np.int64)
    out[0::2] = gaps
    out[1::2] = n
    return out if out[-1] else out[:-1]


def grouped_counts(
    starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, total: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(ids, counts per id) for every value present, from one image's value runs, without a pass per
    value: the runs are grouped by value once (stable sort keeps them in image order)."""
    order = np.argsort(values, kind="stable")
    v, s, n = values[order], starts[order], lengths[order]
    if v.size == 0:
        return v, []
    first = np.ones(v.size, bool)
    first[1:] = v[1:] != v[:-1]
    ends = s + n
    gaps = s.copy()
    gaps[1:] -= np.where(
        first[1:], 0, ends[:-1]
    )  # 0-run before each 1-run (from the previous run of the group)
    gstart = np.flatnonzero(first)
    gend = np.append(gstart[1:], v.size)  # exclusive
    tails = total - ends[gend - 1]
    # per group: gap, len, gap, len, ..., tail (the tail only when > 0)
    sizes = 2 * (gend - gstart) + (tails > 0)
    out = np.empty(int(sizes.sum()), np.int64)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    idx = np.arange(v.size) - np.repeat(gstart, gend - gstart)  # run index within its group
    pos = np.repeat(offsets, gend - gstart) + 2 * idx
    out[pos] = gaps
    out[pos + 1] = n
    has_tail = tails > 0
    out[(offsets + sizes - 1)[has_tail]] = tails[has_tail]
    return v[gstart], np.split(out, offsets[1:])


def class_boxes(
    starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, areas, boxes) of every value present, from an image's column-major value runs, in one
    vectorized pass (not one pass per value): ids ascending, areas in pixels, boxes (K, 4) as COCO's
    [x, y, w, h] in whole pixels. Row-major runs (those of ``image.T``, with ``height`` = the width)
    give the boxes transposed."""
    order = np.argsort(values, kind="stable")
    v, s, n = values[order], starts[order], lengths[order]
    if v.size == 0:
        return v, np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
    first = np.ones(v.size, bool)
    first[1:] = v[1:] != v[:-1]
    g = np.flatnonzero(first)
    last = s + n - 1
    xs, xl = s // height, last // height
    ys, yl = s - xs * height, last - xl * height
    x0, x1 = np.minimum.reduceat(xs, g), np.maximum.reduceat(xl, g)
    y0, y1 = np.minimum.reduceat(ys, g), np.maximum.reduceat(yl, g)
    # a run that crosses a column end covers the last row and then the first one
    crosses = np.logical_or.reduceat(xl > xs, g)
    y0[crosses] = 0
    y1[crosses] = height - 1
    boxes = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)
    return v[g], np.add.reduceat(n, g), boxes


def counts_to_string(counts: np.ndarray) -> str:
    """pycocotools' rleToString, vectorized."""
    return counts_to_strings([counts])[0]


def counts_to_strings(all_counts: list[np.ndarray]) -> list[str]:
    """pycocotools' rleToString for many counts arrays in one vectorized pass."""
    if not all_counts:
        return []
    sizes = np.array([c.size for c in all_counts])
    cnts = np.concatenate([np.asarray(c, np.int64) for c in all_counts])
    if cnts.size == 0:
        return [""] * len(all_counts)
    local = np.arange(cnts.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    x = cnts.copy()
    delta = local > 2  # from the 4th count of each string on: the difference to the count two before
    x[2:][delta[2:]] -= cnts[:-2][delta[2:]]
    chars = np.zeros((x.size, _MAX_CHUNKS), np.uint8)
    keep = np.zeros((x.size, _MAX_CHUNKS), bool)
    active = np.ones(x.size, bool)
    for k in range(_MAX_CHUNKS):
        c = x & 0x1F
        x = x >> 5  # arithmetic shift, as in the C code (x is signed)
        more = np.where(c & 0x10, x != -1, x != 0)
        chars[:, k] = (c | np.where(more, 0x20, 0)) + 48
        keep[:, k] = active
        active = active & more
        if not active.any():
            break
    text = chars[keep].tobytes().decode("ascii")
    per_count = keep.sum(axis=1)
    ends = np.cumsum(np.add.reduceat(per_count, np.cumsum(sizes) - sizes)) if sizes.all() else None
    if ends is None:  # an empty counts array somewhere: slow path, rare
        bounds = np.concatenate(([0], np.cumsum(per_count)))
        cut = np.concatenate(([0], np.cumsum(sizes)))
        return [text[bounds[a] : bounds[b]] for a, b in zip(cut[:-1], cut[1:], strict=True)]
    starts = np.concatenate(([0], ends[:-1]))
    return [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def string_to_counts(text: str) -> np.ndarray:
    """pycocotools' rleFrString, vectorized; RleError on characters outside the alphabet."""
    raw = np.frombuffer(text.encode("ascii", "strict"), np.uint8).astype(np.int64) - 48
    if raw.size == 0:
        return np.zeros(0, np.int64)
    if raw.min() < 0 or raw.max() > 63:
        raise RleError("RLE string has characters outside '0'..'o'")
    last = (raw & 0x20) == 0  # a chunk without the continuation bit ends a count
    if not last[-1]:
        raise RleError("RLE string ends inside a count")
    ends = np.flatnonzero(last)
    begins = np.concatenate(([0], ends[:-1] + 1))
    pos = np.arange(raw.size) - np.repeat(begins, ends - begins + 1)  # chunk index within its count
    if pos.max() >= _MAX_CHUNKS:
        raise RleError("RLE count longer than 64 bits")
    vals = np.zeros(ends.size, np.int64)
    group = np.repeat(np.arange(ends.size), ends - begins + 1)
    np.add.at(vals, group, (raw & 0x1F) << (5 * pos))
    nchunks = ends - begins + 1
    neg = (raw[ends] & 0x10) != 0  # sign bit of the last chunk: sign-extend
    vals[neg] |= -(np.int64(1) << (5 * nchunks[neg]))
    counts = vals.copy()
    # undo the delta: counts[i] = vals[i] + counts[i-2] for i > 2, i.e. a running sum per parity
    if counts.size > 3:
        counts[3::2] = vals[1] + np.cumsum(vals[3::2])
    if counts.size > 4:
        counts[4::2] = vals[2] + np.cumsum(vals[4::2])
    return counts


def encode_binary(mask: np.ndarray) -> dict:
    """One binary mask (H, W) -> {"size": [H, W], "counts": str}, byte for byte what pycocotools writes."""
    h, w = mask.shape
    starts, lengths, values = value_runs(mask.astype(bool, copy=False).view(np.uint8))
    return {"size": [h, w], "counts": counts_to_string(counts_for(starts, lengths, values, 1, h * w))}


def decode_counts(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """COCO counts -> (H, W) bool; RleError when they do not cover exactly H*W pixels."""
    if counts.size and counts.min() < 0:
        raise RleError("negative RLE count")
    if counts[1:].size and not counts[1:].all():
        raise RleError("RLE count of 0 after the first")
    total = int(counts.sum(dtype=np.int64)) if counts.size else 0
    if total != height * width:
        raise RleError(f"RLE counts cover {total} pixels, size says {width}x{height}")
    bits = np.zeros(counts.size, bool)
    bits[1::2] = True
    return np.repeat(bits, counts).reshape(width, height).T
