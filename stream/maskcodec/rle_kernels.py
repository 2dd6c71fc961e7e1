"""Numba kernels behind ``rle.class_strings``: the COCO compressed RLE strings, areas and boxes of every
value of an integer image, from one pass over its pixels.

Kept apart from rle.py so that importing the vectorized decoder does not import numba. Each hot loop
is its own small function: numba compiled a per-pixel loop several times slower when it shared a
function with rarely-taken code that reallocates arrays or calls other functions.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# trailing zeros of a uint64 from its lowest set bit: a de Bruijn multiply and a 64-entry table
# (numba's public API has no count-trailing-zeros)
_DE_BRUIJN = 0x03F79D71B4CB0A89
_TZ = np.zeros(64, np.int64)
for _i in range(64):
    _TZ[((_DE_BRUIJN << _i) & 0xFFFFFFFFFFFFFFFF) >> 58] = _i


@njit(cache=True, nogil=True, inline="always")
def _trailing_zeros(t):  # pragma: no cover - compiled
    lowest = t & (~t + np.uint64(1))
    return _TZ[(lowest * np.uint64(_DE_BRUIJN)) >> np.uint64(58)]


@njit(cache=True, nogil=True)
def mark_words(words, bits, first, marks):  # pragma: no cover - compiled
    """Indices of the uint64 ``words`` (the image in column-major order, ``bits`` per pixel) that
    hold a run start, i.e. a pixel unlike the one before it (``first``: the pixel before word 0);
    returns how many. Branch-free: whether a word holds one is hard to predict, so it is not asked."""
    sh = np.uint64(bits)
    top = np.uint64(64 - bits)
    last = first
    q = 0
    for w in range(words.size):
        x = words[w]
        marks[q] = w
        q += (x ^ ((x << sh) | last)) != 0
        last = x >> top
    return q


@njit(cache=True, nogil=True)
def expand_words(flat, words, per_word, bits, marks, nmarks, starts, values):  # pragma: no cover
    """Starts and values of the runs of ``flat`` (``words`` seen pixel by pixel) from the marked
    words, then the pixels past the last whole word; returns the number of runs. ``starts`` and
    ``values`` hold at least ``flat.size`` entries, so they never fill up."""
    sh = np.uint64(bits)
    top = np.uint64(64 - bits)
    shift = 0  # log2(bits)
    while (1 << shift) < bits:
        shift += 1
    low = np.uint64(0)  # the lowest bit of every pixel
    for j in range(per_word):
        low |= np.uint64(1) << np.uint64(bits * j)
    starts[0] = 0
    values[0] = flat[0]
    r = 1
    for m in range(nmarks):
        w = marks[m]
        x = words[w]
        last = words[w - 1] >> top if w else np.uint64(flat[0])
        t = x ^ ((x << sh) | last)
        f = bits >> 1
        while f:  # or each pixel's bits into its lowest one
            t |= t >> np.uint64(f)
            f >>= 1
        t &= low
        base = w * per_word
        while t:  # one pass per run start (mostly one), not one per pixel
            i = base + (_trailing_zeros(t) >> shift)
            starts[r] = i
            values[r] = flat[i]
            r += 1
            t &= t - np.uint64(1)
    done = words.size * per_word
    prev = flat[done - 1] if done else flat[0]
    for i in range(max(done, 1), flat.size):
        v = flat[i]
        starts[r] = i
        values[r] = v
        r += v != prev
        prev = v
    return r


@njit(cache=True, nogil=True)
def _write_count(x, buf, p):  # pragma: no cover - compiled
    """pycocotools' rleToString for one (delta-coded) count: 5-bit chunks, low first, 0x20 = more."""
    more = True
    while more:
        c = x & 0x1F
        x >>= 5  # arithmetic shift of a signed value, as in the C code
        more = x != -1 if c & 0x10 else x != 0
        if more:
            c |= 0x20
        buf[p] = c + 48
        p += 1
    return p


@njit(cache=True, nogil=True)
def group_runs(starts, bins, nruns, nbins, height, total, order, buf):  # pragma: no cover - compiled
    """Per value present (bins ascending): (bins, areas, boxes [x, y, w, h], string offsets into
    ``buf``) from the first ``nruns`` runs; ``bins[r]`` is run r's value as an index < ``nbins``,
    ``starts[nruns]`` must be ``total``. ``order`` is scratch of at least ``nruns`` entries; ``buf``
    must hold every string (3 * nruns counts of at most ``ceil((bits(total) + 1) / 5)`` chars)."""
    count = np.zeros(nbins, np.int64)
    area = np.zeros(nbins, np.int64)
    x0 = np.full(nbins, total, np.int64)
    x1 = np.zeros(nbins, np.int64)
    y0 = np.full(nbins, height, np.int64)
    y1 = np.zeros(nbins, np.int64)
    # the runs' columns followed incrementally: two 64-bit divisions per run cost more than all else
    xs = 0  # column of the run's first pixel
    col = 0  # index of that column's first pixel
    for r in range(nruns):
        b = bins[r]
        s = starts[r]
        e = starts[r + 1] - 1
        count[b] += 1
        area[b] += e - s + 1
        while s >= col + height:
            col += height
            xs += 1
        xl = xs
        end_col = col
        while e >= end_col + height:
            end_col += height
            xl += 1
        ys = s - col
        yl = e - end_col
        if xl > xs:  # the run crosses a column end: it covers the last row and then the first
            ys = 0
            yl = height - 1
        x0[b] = min(x0[b], xs)
        x1[b] = max(x1[b], xl)
        y0[b] = min(y0[b], ys)
        y1[b] = max(y1[b], yl)
    k = 0
    for b in range(nbins):
        k += count[b] > 0
    ids = np.empty(k, np.int64)
    areas = np.empty(k, np.int64)
    boxes = np.empty((k, 4), np.int64)
    offsets = np.empty(k + 1, np.int64)
    first = np.empty(nbins, np.int64)  # where each bin's runs begin in ``order``
    j = 0
    n = 0
    for b in range(nbins):
        first[b] = n
        n += count[b]
        if count[b]:
            ids[j] = b
            areas[j] = area[b]
            boxes[j, 0] = x0[b]
            boxes[j, 1] = y0[b]
            boxes[j, 2] = x1[b] - x0[b] + 1
            boxes[j, 3] = y1[b] - y0[b] + 1
            j += 1
    for r in range(nruns):  # counting sort: each value's runs together, in image order
        b = bins[r]
        order[first[b]] = r
        first[b] += 1
    p = 0
    r = 0
    for j in range(k):
        offsets[j] = p
        # counts: 0-run, 1-run, 0-run, ..., the last 0-run only when not empty; from the 4th on
        # written as the difference to the count two before
        c1 = 0  # the count before the current one
        c2 = 0  # the one before that
        m = 0  # counts written
        end = 0
        for _ in range(count[ids[j]]):
            q = order[r]
            r += 1
            for c in (starts[q] - end, starts[q + 1] - starts[q]):
                p = _write_count(c - c2 if m > 2 else c, buf, p)
                c2 = c1
                c1 = c
                m += 1
            end = starts[q + 1]
        if end < total:
            c = total - end
            p = _write_count(c - c2 if m > 2 else c, buf, p)
    offsets[k] = p
    return ids, areas, boxes, offsets
