"""The vectorized NumPy COCO RLE encoder that stream/maskcodec/rle.py used before its numba kernels:
kept here as the reference they are held to (with pycocotools), value by value."""

from __future__ import annotations

import numpy as np

_MAX_CHUNKS = 13  # 64-bit values need at most 13 five-bit chunks


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
