"""Polygons of class-id masks (stream/maskcodec/polygons.py, segments.py) on the real CamVid labels of
tests/fixtures, rasterized back by pycocotools (the reference) and by our decoder.

Stated bounds (docs/PROTOCOL.md section 4, measured on these 18 frames at 240x180):
  * tolerance 0: exact, in both decoders (corners on pixel edges, holes kept);
  * tolerance 0.5: IoU >= 0.9 for every class of every frame, pixel accuracy >= 0.99;
  * tolerance 1 (the default): IoU >= 0.85 for every class covering >= 5 % of a frame,
    pixel accuracy >= 0.96 (thin classes such as poles lose most at this size).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.meta import ClassTable
from stream.maskcodec import polygons, segments
from stream.messages import MessageError, decode_mask_message, encode_mask_message
from tests.unit.test_maskcodec_fast import SHAPES

mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools is in the dev extra")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _labels(camvid: Path) -> list[np.ndarray]:
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(camvid.glob("*/labels/*.png"))]
    assert len(labels) >= 10 and all(lab is not None and lab.ndim == 2 for lab in labels)
    return labels


def _coco_ring(ring: list[int], h: int, w: int) -> np.ndarray:
    if len(ring) < 6:
        return np.zeros((h, w), bool)
    return mask_api.decode(mask_api.frPyObjects([[float(v) for v in ring]], h, w))[:, :, 0].astype(bool)


def _coco_segment(seg: dict, h: int, w: int) -> np.ndarray:
    """A segment as pycocotools rasterizes it: each polygon's exterior minus its holes."""
    out = np.zeros((h, w), bool)
    for p in seg["polygons"]:
        region = _coco_ring(p["exterior"], h, w)
        for hole in p["holes"]:
            region &= ~_coco_ring(hole, h, w)
        out |= region
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("components", [False, True])
def test_tolerance_zero_is_exact_in_pycocotools_and_ours(camvid, components):
    for lab in _labels(camvid):
        h, w = lab.shape
        doc = json.loads(json.dumps(segments.encode(lab, "polygons", tolerance=0, components=components)))
        assert doc["tolerance"] == 0.0
        assert np.array_equal(segments.decode(doc, w, h, "polygons"), lab)
        for s in doc["segments"]:
            region = _coco_segment(s, h, w)
            assert region.sum() == s["area"]
            if not components:
                assert np.array_equal(region, lab == s["category_id"])


@pytest.mark.parametrize(
    ("tolerance", "min_area", "min_iou", "min_accuracy"), [(0.5, 0, 0.9, 0.99), (1.0, 0.05, 0.85, 0.96)]
)
def test_simplified_polygons_stay_within_the_stated_bounds(
    camvid, tolerance, min_area, min_iou, min_accuracy
):
    checked = 0
    points = {0.0: 0, tolerance: 0}
    for lab in _labels(camvid):
        h, w = lab.shape
        doc = segments.encode(lab, "polygons", tolerance=tolerance)
        ours = segments.decode(doc, w, h, "polygons")
        assert (ours == lab).mean() >= min_accuracy
        for s in doc["segments"]:
            if s["area"] < min_area * h * w:
                continue
            truth = lab == s["category_id"]
            assert _iou(_coco_segment(s, h, w), truth) >= min_iou, (tolerance, s["category_id"])
            assert _iou(ours == s["category_id"], truth) >= min_iou, (tolerance, s["category_id"])
            checked += 1
        for t in points:
            d = doc if t == tolerance else segments.encode(lab, "polygons", tolerance=0)
            points[t] += sum(len(p["exterior"]) for s in d["segments"] for p in s["polygons"])
    assert checked > 50
    assert points[tolerance] < 0.9 * points[0.0]  # the tolerance really simplified


def test_holes_are_kept_and_islands_in_holes_too():
    m = np.zeros((40, 40), np.uint8)
    m[5:35, 5:35] = 1  # a square ...
    m[12:28, 12:28] = 0  # ... with a hole ...
    m[17:23, 17:23] = 1  # ... with an island in it
    m[30, 30] = 0  # a one-pixel hole
    polys = polygons.binary_polygons(m)
    assert len(polys) == 2  # the square and the island
    outer = max(polys, key=lambda p: len(p.holes))
    assert len(outer.holes) == 2
    assert np.array_equal(polygons.rasterize(polys, 40, 40), m)
    region = _coco_segment({"polygons": [p.to_json() for p in polys]}, 40, 40)
    assert np.array_equal(region, m.astype(bool))


@pytest.mark.parametrize("name", list(SHAPES))
def test_hard_shapes_round_trip_through_pycocotools_at_tolerance_zero(name):
    # 1-pixel lines and spurs, diagonal-only joints, checkerboards, nested holes and islands,
    # regions on the image border: pycocotools paints every class and every region back exactly
    lab = SHAPES[name]
    h, w = lab.shape
    for components in (False, True):
        doc = json.loads(json.dumps(segments.encode(lab, "polygons", tolerance=0, components=components)))
        assert np.array_equal(segments.decode(doc, w, h, "polygons"), lab)
        for s in doc["segments"]:
            region = _coco_segment(s, h, w)
            assert region.sum() == s["area"]
            ys, xs = np.nonzero(region)
            assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == s["bbox"]
            if components:
                assert (lab[region] == s["category_id"]).all()
            else:
                assert np.array_equal(region, lab == s["category_id"])


def test_corners_lie_on_pixel_edges():
    m = np.zeros((10, 10), np.uint8)
    m[3:7, 2:6] = 1  # pixels x 2..5, y 3..6: the square [2, 6] x [3, 7]
    (p,) = polygons.binary_polygons(m)
    assert sorted(map(tuple, p.exterior.tolist())) == [(2, 3), (2, 7), (6, 3), (6, 7)]


def test_polygons_message_fills_with_the_ignore_id(camvid):
    classes = ClassTable.from_json_file(camvid / "classes.json")
    assert classes.ignore_index is not None
    lab = _labels(camvid)[1]
    frames = [
        bytes(f)
        for f in encode_mask_message(
            stream="cam0",
            seq=0,
            frame_index=0,
            mask=lab,
            classes=classes,
            encoding="polygons",
            segments={"tolerance": 0},
        )
    ]
    msg = decode_mask_message(frames)
    assert np.array_equal(msg.mask, lab)
    assert msg.segments["fill"] == classes.ignore_index
    assert classes.ignore_index not in {s["category_id"] for s in msg.segments["segments"]}


@pytest.mark.parametrize(
    "ring",
    [
        [0, 0, 5, 0],
        [0, 0, 9999, 0, 0, 5],
        [0, 0, 5, 0, 0, "5"],
        [0, 0, 5, 0, 0, -1],
        [0, 0, 5, 0, 0, True],  # JSON true is no coordinate, though Python's bool is an int
        [0, 0, 5, 0, 0, 5.0],
        [0, 0, 5, 0, 0, 2**70],  # beyond 64 bits: a clear refusal, not an OverflowError
        [0, 0, 5, 0, 0, None],
        5,
    ],
)
@pytest.mark.parametrize("where", ["exterior", "hole"])
def test_bad_rings_are_refused(camvid, ring, where):
    classes = ClassTable.from_json_file(camvid / "classes.json")
    lab = _labels(camvid)[0]
    frames = [
        bytes(f)
        for f in encode_mask_message(
            stream="cam0", seq=0, frame_index=0, mask=lab, classes=classes, encoding="polygons"
        )
    ]
    doc = json.loads(frames[2])
    polygon = doc["segments"][0]["polygons"][0]
    if where == "exterior":
        polygon["exterior"] = ring
    else:
        polygon["holes"].append(ring)
    payload = json.dumps(doc).encode()
    header = json.loads(frames[1])
    header["mask_bytes"] = len(payload)
    if isinstance(ring, list) and len(ring) % 2 == 0 and all(type(v) is int and 0 <= v <= 240 for v in ring):
        decode_mask_message([frames[0], json.dumps(header).encode(), payload])  # degenerate: ignored
        return
    with pytest.raises(MessageError):
        decode_mask_message([frames[0], json.dumps(header).encode(), payload])


def test_a_payload_that_paints_the_frame_too_often_is_refused():
    h, w = 90, 120
    frame = [0, 0, w, 0, w, h, 0, h]
    doc = {
        "format": "polygons",
        "size": [h, w],
        "components": False,
        "tolerance": 0.0,
        "fill": 0,
        "segments": [
            {
                "category_id": 1,
                "area": 1,
                "bbox": [0, 0, w, h],
                "polygons": [{"exterior": frame, "holes": []}],
            }
        ]
        * (segments.MAX_PAINT + 1),
    }
    with pytest.raises(segments.SegmentsError, match="paint more than"):
        segments.decode(doc, w, h, "polygons")
    doc["segments"] = doc["segments"][: segments.MAX_PAINT]
    assert (segments.decode(doc, w, h, "polygons") == 1).all()
