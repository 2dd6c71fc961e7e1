"""The compiled polygon tracer (stream/maskcodec/crack.py) beyond the documents it makes (those are
held byte for byte to the plain algorithm in test_maskcodec_fast.py): its Douglas-Peucker against
the plain one on every ring of real frames, its ring text against json.dumps, and the state it keeps
between frames (scratch buffers, stamps, growth, threads) never leaking into a result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.maskcodec import crack, segments
from tests.unit import plain_dp


def _frames(camvid: Path) -> list[np.ndarray]:
    paths = sorted(camvid.glob("*/labels/*.png"))[::4]
    return [
        cv2.resize(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), (480, 360), interpolation=cv2.INTER_NEAREST)
        for p in paths
    ]


def _rings(t: crack.Traced) -> list[np.ndarray]:
    return [t.xy[a:b] for a, b in zip(t.bounds[:-1], t.bounds[1:], strict=True)]


def _same(a: crack.Traced, b: crack.Traced) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("ids", "areas", "boxes", "cls", "parent", "area", "box", "xy", "bounds")
    )


def test_simplification_is_the_plain_douglas_peucker_on_every_ring(camvid):
    rng = np.random.default_rng(3)
    frames = _frames(camvid)[:2] + [rng.integers(0, 3, (40, 50), dtype=np.uint8)]
    checked = 0
    for frame in frames:
        exact = crack.trace(frame, 0.0)
        for tolerance in (0.5, 1.0, 2**0.5, 2.5, 7.0):
            simplified = _rings(crack.trace(frame, tolerance))
            for ring, got in zip(_rings(exact), simplified, strict=True):
                assert np.array_equal(got, plain_dp.approx_closed(ring, tolerance)), (tolerance, ring[:4])
                checked += 1
    assert checked > 1000


def test_the_plain_douglas_peucker_is_opencvs_where_opencv_measures_to_segments(camvid):
    if not plain_dp.OPENCV_SAME:
        pytest.skip(f"OpenCV {cv2.__version__} measures to the line (before opencv#28119)")
    for ring in _rings(crack.trace(_frames(camvid)[0], 0.0)):
        for tolerance in (1.0, 2.5):
            want = cv2.approxPolyDP(ring.reshape(-1, 1, 2), tolerance, True).reshape(-1, 2)
            assert np.array_equal(plain_dp.approx_closed(ring, tolerance), want)


@pytest.mark.parametrize("components", [False, True])
def test_the_document_text_is_what_json_writes_at_every_digit_count(components):
    # coordinates, areas and boxes of 1 to 4 digits (a tall thin and a wide mask), several classes
    numbers = set()
    for shape in ((3, 1200), (1100, 2), (40, 30)):
        mask = np.zeros(shape, np.uint8)
        mask[1:-1:2, 1:-1:3] = 1
        mask[0, ::7] = 2
        mask[-1, :] = 250
        for tolerance in (0.0, 1.0):
            opts = {"tolerance": tolerance, "components": components, "skip": (2,)}
            doc = segments.encode(mask, "polygons", **opts)
            want = json.dumps(doc, separators=(",", ":")).encode()
            assert segments.encode_json(mask, "polygons", **opts) == want
            numbers |= {len(str(v)) for s in doc["segments"] for v in (*s["bbox"], s["area"])}
    assert numbers == {1, 2, 3, 4}


def test_the_state_kept_between_frames_never_changes_a_result(camvid):
    frames = _frames(camvid)[:3]
    fresh: list[crack.Traced] = []
    for f in frames:  # each frame traced first in a thread of its own: new scratch, stamps from 0
        th = threading.Thread(target=lambda f=f: fresh.append(crack.trace(f, 1.0, (11,))))
        th.start()
        th.join()
    small = np.eye(5, dtype=np.uint8)
    small_rings = crack.trace(small, 0.0).cls.tolist()
    for _ in range(3):  # frame after frame, sizes alternating (the scratch follows the size)
        for f, want in zip(frames, fresh, strict=True):
            assert _same(crack.trace(f, 1.0, (11,)), want)
            assert crack.trace(small, 0.0).cls.tolist() == small_rings
    # both sizes keep their buffers (two sinks of a stream may encode at different sizes)
    kept = crack._scratch(*frames[0].shape)
    crack.trace(small)
    assert crack._scratch(*frames[0].shape) is kept
    # stamps near their limit: the marks are cleared and tracing starts over from 0
    scratch = crack._scratch(*frames[0].shape)
    scratch.base = crack._STAMP_LIMIT - 2 * frames[0].size - 10
    for f, want in zip(frames, fresh, strict=True):
        assert _same(crack.trace(f, 1.0, (11,)), want)
    assert scratch.base < 10_000


def test_buffers_grow_for_a_frame_of_many_rings():
    # a checkerboard: every pixel its own region (8-connected diagonals join one class's pixels)
    # and noise with thousands of rings and vertices, in a thread (fresh, small buffers)
    rng = np.random.default_rng(5)
    masks = [
        (np.indices((61, 83)).sum(axis=0) % 2).astype(np.uint8),
        rng.integers(0, 6, (200, 300), dtype=np.uint8),
    ]
    got: list[crack.Traced] = []
    th = threading.Thread(target=lambda: got.extend(crack.trace(m, 0.0) for m in masks))
    th.start()
    th.join()
    for m, t in zip(masks, got, strict=True):
        assert len(t.cls) > crack._Scratch(1, 1).rings and len(t.xy) > 4096
        assert _same(crack.trace(m, 0.0), t)  # this thread's buffers, already grown or not
        # the exterior areas minus the holes' are the pixel counts of each class
        for c, area in zip(t.ids.tolist(), t.areas.tolist(), strict=True):
            ext = (t.cls == c) & (t.parent == -1)
            holes = (t.cls == c) & (t.parent >= 0)
            assert t.area[ext].sum() - t.area[holes].sum() == area == (m == c).sum()


def test_an_empty_mask_is_refused():
    with pytest.raises(ValueError, match="empty mask"):
        crack.trace(np.zeros((0, 5), np.uint8))


def test_warm_compiles_every_kernel():
    segments.warm("polygons")
    # (the other kernels are called from these)
    for kernel in (crack._runs, crack._trace, crack._finish, crack._segments):
        assert kernel.signatures, kernel


OPTIONS = [
    ("polygons", {"tolerance": 0.0}),
    ("polygons", {"tolerance": 1.0, "components": True, "skip": (1,)}),
    ("coco-rle", {}),
    ("coco-rle", {"components": True, "skip": (1,)}),
]
BOUNDSCHECKED = f"""
OPTIONS = {OPTIONS!r}
import json, sys
import numpy as np
from stream.maskcodec import segments
out = []
for spec in json.loads(sys.argv[1]):
    mask = np.array(spec, np.uint8)
    for fmt, opts in OPTIONS:
        out.append(segments.encode_json(mask, fmt, **opts).decode())
print(json.dumps(out))
"""


def test_no_kernel_reads_or_writes_out_of_bounds(tmp_path):
    """numba does not check indices unless asked: the same encodes (both compiled encoders, polygons and
    coco-rle) with every index checked (a fresh compilation with NUMBA_BOUNDSCHECK=1, in its own cache
    folder) raise nothing and give the same text."""
    rng = np.random.default_rng(11)
    masks = [
        np.zeros((1, 1), np.uint8),
        np.ones((1, 7), np.uint8),
        np.arange(6, dtype=np.uint8).reshape(6, 1) % 2,
        (np.indices((9, 11)).sum(axis=0) % 2).astype(np.uint8),
        rng.integers(0, 4, (23, 17), dtype=np.uint8),
        rng.integers(0, 2, (40, 64), dtype=np.uint8) * 255,
    ]
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    arg = json.dumps([m.tolist() for m in masks])
    proc = subprocess.run([sys.executable, "-c", BOUNDSCHECKED, arg], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = [segments.encode_json(m, fmt, **opts).decode() for m in masks for fmt, opts in OPTIONS]
    assert json.loads(proc.stdout) == want


def _plain_region_labels(mask: np.ndarray, skip: tuple[int, ...]) -> tuple[np.ndarray, list[int]]:
    """One connectedComponents call per class, its components renumbered in raster order of their
    first pixel (OpenCV numbers them in the order its block scan meets them), class by class."""
    labels = np.zeros(mask.shape, np.int32)
    category = [-1]
    for c in np.unique(mask).tolist():
        if c in skip:
            continue
        n, found = cv2.connectedComponents((mask == c).view(np.uint8), connectivity=8)
        flat = found.reshape(-1)
        first = np.full(n, flat.size)
        np.minimum.at(first, flat, np.arange(flat.size))
        rank = np.empty(n, np.int64)
        rank[np.argsort(first[1:]) + 1] = np.arange(1, n)
        labels[found > 0] = rank[found[found > 0]] + len(category) - 1
        category += [c] * (n - 1)
    return labels, category


def test_region_labels_are_connected_components_in_raster_order_class_by_class(camvid):
    rng = np.random.default_rng(13)
    masks = _frames(camvid)[:3] + [
        rng.integers(0, 4, (31, 45), dtype=np.uint8),
        (np.indices((12, 9)).sum(axis=0) % 2).astype(np.uint8),  # diagonal neighbours: one region
        np.zeros((1, 1), np.uint8),
    ]
    for mask in masks:
        for skip in ((), (11,), (0, 1)):
            labels, category = crack.region_labels(mask, skip)
            want_labels, want_category = _plain_region_labels(mask, skip)
            assert np.array_equal(labels, want_labels) and category == want_category
