"""The mask codecs (stream/maskcodec) against plain references written here, on the real CamVid
labels of tests/fixtures (upsampled to 480x360, as the publisher benchmark uses them) and on
hand-made hard shapes:

* polygons: the encoder (every class traced in one compiled pass along pixel edges, rings simplified
  by a compiled Douglas-Peucker, ring text written by a kernel) gives byte for byte the document of
  the plain per-class algorithm (whole frame, upsample 2x, OpenCV's findContours, map border pixels to
  edges, simplify ring by ring as approxPolyDP does), at every tolerance;
* ``segments.encode_json`` (the mask stream's payload, written as text) is byte for byte the compact
  JSON of that document;
* ``rle.class_strings`` gives every class's area and bbox as counting pixels does.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.maskcodec import polygons, rle, segments
from tests.unit import plain_dp

SIZE = (480, 360)


def _labels(camvid: Path) -> list[np.ndarray]:
    paths = sorted(camvid.glob("*/labels/*.png"))
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]
    assert len(labels) >= 10 and all(lab is not None and lab.ndim == 2 for lab in labels)
    return [cv2.resize(lab, SIZE, interpolation=cv2.INTER_NEAREST) for lab in labels]


def _reference_polygons(binary: np.ndarray, tolerance: float) -> list[dict]:
    """The plain algorithm of polygons.py's docstring, one ring at a time: trace the 2x image, map
    2x border pixels to pixel edges, drop repeated corners, shoelace area, simplify each ring."""
    h, w = binary.shape
    up = binary.astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings, areas, boxes = [], [], []
    for c in contours:
        pts = (c.reshape(-1, 2) + 1) // 2
        keep = [i for i in range(len(pts)) if (pts[i] != pts[i - 1]).any()] or [0]
        pts = pts[keep].astype(np.int64)
        nxt = np.roll(pts, -1, axis=0)
        areas.append(int(abs((pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1]).sum()) // 2))
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        boxes.append([int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1])])
        if tolerance > 0 and len(pts) > 3:
            pts = plain_dp.approx(pts, tolerance)
        rings.append(pts.reshape(-1).tolist())
    out = []
    hier = hierarchy[0] if hierarchy is not None else []
    for i, (_, _, child, parent) in enumerate(hier):
        if parent != -1:
            continue
        holes, area, j = [], areas[i], child
        while j != -1:
            holes.append(rings[j])
            area -= areas[j]
            j = hier[j][0]
        out.append({"exterior": rings[i], "holes": holes, "area": area, "bbox": boxes[i]})
    return out


def _reference_document(mask: np.ndarray, tolerance: float, components: bool, skip: tuple) -> dict:
    segs = []
    ids, counts = np.unique(mask, return_counts=True)
    for c, n in zip(ids.tolist(), counts.tolist(), strict=True):
        if c in skip:
            continue
        binary = mask == c
        ys, xs = np.nonzero(binary)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        found = _reference_polygons(binary, tolerance)
        if components:
            segs += [
                {
                    "category_id": c,
                    "area": p["area"],
                    "bbox": p["bbox"],
                    "polygons": [{"exterior": p["exterior"], "holes": p["holes"]}],
                }
                for p in found
            ]
        else:
            polys = [{"exterior": p["exterior"], "holes": p["holes"]} for p in found]
            segs.append({"category_id": c, "area": n, "bbox": bbox, "polygons": polys})
    segs.sort(key=lambda s: -s["area"])
    return {
        "format": "polygons",
        "size": list(mask.shape),
        "components": components,
        "tolerance": float(tolerance),
        "fill": int(ids[counts.argmax()]),
        "segments": segs,
    }


@pytest.mark.parametrize(
    ("tolerance", "components"), [(0.0, False), (0.5, False), (1.0, False), (1.0, True), (2.5, True)]
)
def test_polygons_are_byte_for_byte_the_plain_algorithm(camvid, tolerance, components):
    labels = _labels(camvid)
    skip = (11,)  # CamVid's ignore id, as the mask publisher leaves it out
    for lab in labels[::3]:
        ours = segments.encode(lab, "polygons", tolerance=tolerance, components=components, skip=skip)
        ref = _reference_document(lab, tolerance, components, skip)
        assert json.dumps(ours) == json.dumps(ref)
        # the payload, written without building the document
        payload = segments.encode_json(lab, "polygons", tolerance=tolerance, components=components, skip=skip)
        assert payload == json.dumps(ref, separators=(",", ":")).encode()


def test_class_areas_and_boxes_are_what_counting_pixels_gives(camvid):
    # both encoders find them in their own pass: coco-rle's column runs, the polygon tracer's row runs
    from stream.maskcodec import crack

    rng = np.random.default_rng(7)
    masks = _labels(camvid)[:4] + [
        rng.integers(0, 3, (37, 53), dtype=np.uint8),  # runs crossing column ends everywhere
        np.full((9, 4), 5, np.uint8),
        np.eye(6, dtype=np.uint8) * 200,
    ]
    for m in masks:
        want = np.unique(m)
        traced = crack.trace(m)
        for ids, areas, boxes in (rle.class_strings(m)[:3], (traced.ids, traced.areas, traced.boxes)):
            assert ids.tolist() == want.tolist()
            for c, area, box in zip(ids.tolist(), areas.tolist(), boxes.tolist(), strict=True):
                ys, xs = np.nonzero(m == c)
                assert area == xs.size
                assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_binary_polygons_of_a_crop_with_an_offset():
    m = np.zeros((30, 40), np.uint8)
    m[3:9, 4:12] = 1
    m[5:7, 6:8] = 0  # a hole
    (p,) = polygons.binary_polygons(m[2:12, 3:20], offset=(3, 2))
    assert sorted(map(tuple, p.exterior.tolist())) == [(4, 3), (4, 9), (12, 3), (12, 9)]
    assert [sorted(map(tuple, h.tolist())) for h in p.holes] == [[(6, 5), (6, 7), (8, 5), (8, 7)]]
    assert p.area == 6 * 8 - 4 and p.bbox == (4, 3, 8, 6)


def _shapes() -> dict[str, np.ndarray]:
    """Class-id masks with the cases a pixel-edge tracer gets wrong first."""
    rng = np.random.default_rng(17)
    out: dict[str, np.ndarray] = {}
    out["1x1 image"] = np.ones((1, 1), np.uint8)
    out["one row"] = np.array([[1, 1, 0, 1, 2, 2, 0, 1]], np.uint8)
    out["one column"] = out["one row"].T.copy()
    m = np.zeros((7, 9), np.uint8)
    m[0, 0] = m[3, 4] = m[6, 8] = 1  # single pixels, two in corners of the image
    m[5, 1] = 2  # a class of one pixel: a 1x1 box (cv2.compare would take that crop for a scalar)
    out["single pixels"] = m
    m = np.zeros((9, 11), np.uint8)
    m[4, :] = 1  # a 1-pixel line across the image
    m[:, 2] = 2  # another one, crossing it
    m[0, 5:] = 3  # along the border
    out["1-pixel lines"] = m
    out["diagonal"] = np.eye(8, dtype=np.uint8)
    out["anti-diagonal"] = np.fliplr(np.eye(8, dtype=np.uint8)).copy()
    m = np.zeros((10, 10), np.uint8)
    m[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]] = 1  # a diagonal chain ...
    m[3, 1] = m[1, 3] = m[5, 7] = m[7, 5] = 1  # ... with diagonal-only spurs ...
    m[8, 8] = 1  # ... and a pixel touching it by a corner only
    out["diagonal joints"] = m
    out["checkerboard"] = (np.indices((8, 10)).sum(axis=0) % 2).astype(np.uint8)
    m = np.zeros((8, 8), np.uint8)
    m[::2, ::2] = 1
    out["sparse checkerboard"] = m
    m = np.zeros((23, 23), np.uint8)
    for k, v in enumerate((1, 0, 1, 0, 1, 0)):  # nested: region, hole, island, hole, island, hole
        m[2 * k : 23 - 2 * k, 2 * k : 23 - 2 * k] = v
    m[1, 1] = 0  # a one-pixel hole
    m[5, 5] = 1  # a one-pixel island in a hole
    out["holes with islands"] = m
    m = np.ones((12, 15), np.uint8)
    m[1:-1, 1:-1] = 2  # a frame touching all four borders around another class
    m[5:7, 6:9] = 0
    out["border frame"] = m
    m = np.zeros((15, 15), np.uint8)
    y, x, dy, dx, n = 0, 0, 0, 1, 14  # a 1-pixel-wide spiral
    while n > 0:
        for _ in range(2):
            for _ in range(n):
                m[y, x] = 1
                y, x = y + dy, x + dx
            dy, dx = dx, -dy
            n -= 2
    out["spiral"] = m
    for k in range(3):
        out[f"noise {k}"] = rng.integers(0, 2 + k, (13 + 5 * k, 17 + 3 * k), dtype=np.uint8)
        f = cv2.GaussianBlur(rng.random((30, 40)).astype(np.float32), (0, 0), 1.0 + k)
        out[f"blobs {k}"] = np.digitize(f, np.quantile(f, [0.3, 0.6, 0.8])).astype(np.uint8)
    return out


SHAPES = _shapes()


@pytest.mark.parametrize("name", list(SHAPES))
def test_hard_shapes_give_the_plain_algorithm_byte_for_byte(name):
    mask = SHAPES[name]
    h, w = mask.shape
    for tolerance in (0.0, 1.0, 2**0.5, 2.5):  # sqrt(2): rectangles at OpenCV's tie
        for components in (False, True):
            ours = segments.encode(mask, "polygons", tolerance=tolerance, components=components)
            ref = _reference_document(mask, tolerance, components, ())
            assert json.dumps(ours) == json.dumps(ref), (tolerance, components)
            payload = segments.encode_json(mask, "polygons", tolerance=tolerance, components=components)
            assert payload == json.dumps(ref, separators=(",", ":")).encode(), (tolerance, components)
    doc = segments.encode(mask, "polygons", tolerance=0)
    assert np.array_equal(segments.decode(doc, w, h, "polygons"), mask)
    for s in segments.encode(mask, "polygons", tolerance=0, components=True)["segments"]:
        (p,) = s["polygons"]
        region = polygons.Polygon(
            np.array(p["exterior"]).reshape(-1, 2), [np.array(r).reshape(-1, 2) for r in p["holes"]]
        )
        painted = polygons.rasterize([region], h, w).astype(bool)
        assert painted.sum() == s["area"] and (mask[painted] == s["category_id"]).all()


@pytest.mark.parametrize("offset", [(3, 2), (-10, -5), (-1, 4)])
def test_an_offset_moves_the_polygons_and_nothing_else(offset):
    # negative offsets too: the rings are converted before the offset is added
    mask = SHAPES["holes with islands"]
    plain = polygons.binary_polygons(mask, 1.0)
    moved = polygons.binary_polygons(mask, 1.0, offset=offset)
    assert len(moved) == len(plain) > 1
    for p, q in zip(plain, moved, strict=True):
        assert np.array_equal(p.exterior + offset, q.exterior)
        assert [(h + offset).tolist() for h in p.holes] == [h.tolist() for h in q.holes]
        assert q.area == p.area and q.bbox == (p.bbox[0] + offset[0], p.bbox[1] + offset[1], *p.bbox[2:])
