"""One frame's mask as a list of segments (COCO-style), in either of two formats:

* ``coco-rle``: per class (or per connected component) a COCO compressed RLE, exact;
* ``polygons``: per class (or per component) polygons with holes, simplified to ``tolerance`` pixels.

The document (``encode``/``decode``) is what the mask stream sends as its payload for these encodings
(docs/PROTOCOL.md section 4), what the images sink and ``segstream predict`` write, and what the MQTT
sink publishes; one format everywhere::

    {"format": "coco-rle", "size": [H, W], "components": false,
     "segments": [{"category_id": 3, "area": 5120, "bbox": [x, y, w, h],
                   "segmentation": {"size": [H, W], "counts": "..."}}, ...]}
    {"format": "polygons", "size": [H, W], "components": false, "tolerance": 1.0, "fill": 11,
     "segments": [{"category_id": 3, "area": 5120, "bbox": [x, y, w, h],
                   "polygons": [{"exterior": [x0, y0, x1, y1, ...], "holes": [[...], ...]}]}, ...]}

``area`` and ``bbox`` are exact (from the mask, in pixels, COCO order [x, y, w, h]) in both formats.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from stream.maskcodec import polygons as poly
from stream.maskcodec import rle

FORMATS = ("coco-rle", "polygons")
DEFAULT_TOLERANCE = 1.0
MAX_PAINT = 64  # polygons: the segments' bounding boxes may add up to this many frames (decoder limit)


class SegmentsError(ValueError):
    """A segments document that does not describe a mask of the announced size."""


def encode(
    mask: np.ndarray,
    fmt: str,
    *,
    components: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    fill: int | None = None,
    skip: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The segments document of a class-id mask (H, W) uint8. ``skip`` leaves classes out (e.g. the
    ignore id for polygons, whose pixels then take ``fill``); ``fill`` (polygons) is the id a decoder
    gives pixels no polygon covers (default: the most frequent class of the frame)."""
    mask = _checked(mask, fmt)
    h, w = mask.shape
    segments: list[dict[str, Any]] = []
    if fmt == "polygons":
        ids, areas, keep, box_list, found = _polygons(mask, components, tolerance, skip)
        for (k, c), regions in zip(keep, found, strict=True):
            if not components:
                segments.append(
                    {
                        "category_id": c,
                        "area": int(areas[k]),
                        "bbox": box_list[k],
                        "polygons": [{"exterior": e, "holes": hl} for e, hl, _, _ in regions],
                    }
                )
                continue
            # each polygon of a class is one 8-connected region: exactly its connected components
            for e, hl, area, bbox in regions:
                segments.append(
                    {
                        "category_id": c,
                        "area": area,
                        "bbox": list(bbox),
                        "polygons": [{"exterior": e, "holes": hl}],
                    }
                )
    else:
        ids, areas, boxes, strings = rle.class_strings(mask)  # one compiled pass: runs, boxes, strings
        keep = _kept(ids, skip)
        box_list = boxes.tolist()
    if fmt == "coco-rle" and not components:
        for k, c in keep:
            segments.append(
                {
                    "category_id": c,
                    "area": int(areas[k]),
                    "bbox": box_list[k],
                    "segmentation": {"size": [h, w], "counts": strings[k]},
                }
            )
    elif fmt == "coco-rle":
        # every class's 8-connected regions numbered in one label image (the polygon tracer knows each
        # run's region), so its runs and strings are taken in one pass
        from stream.maskcodec import crack

        labels, category = crack.region_labels(mask, skip)
        numbers, region_areas, region_boxes, texts = rle.class_strings(labels)
        found = zip(numbers.tolist(), region_areas.tolist(), region_boxes.tolist(), texts, strict=True)
        for k, area, box, text in found:
            if k == 0:
                continue  # pixels of skipped classes
            segments.append(
                {
                    "category_id": category[k],
                    "area": area,
                    "bbox": box,
                    "segmentation": {"size": [h, w], "counts": text},
                }
            )
    doc: dict[str, Any] = {"format": fmt, "size": [h, w], "components": bool(components)}
    if fmt == "polygons":
        doc["tolerance"] = float(tolerance)
        doc["fill"] = _fill(ids, areas, fill)
        # big areas first: a decoder paints in order, so small segments stay on top where
        # simplified outlines overlap
        segments.sort(key=lambda s: -s["area"])
    doc["segments"] = segments
    return doc


def encode_json(
    mask: np.ndarray,
    fmt: str,
    *,
    components: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    fill: int | None = None,
    skip: tuple[int, ...] = (),
) -> bytes:
    """``json.dumps(encode(...), separators=(",", ":")).encode()``, byte for byte (the mask stream's
    payload; tests/unit/test_maskcodec_fast.py compares the two). Polygons are written straight to
    text by a compiled kernel (crack.Traced.segments_json): building the document's lists for the
    JSON encoder cost about as much as tracing."""
    if fmt != "polygons":
        doc = encode(mask, fmt, components=components, tolerance=tolerance, fill=fill, skip=skip)
        return json.dumps(doc, separators=(",", ":")).encode()
    mask = _checked(mask, fmt)
    h, w = mask.shape
    from stream.maskcodec import crack  # numba: loaded by the processes that encode polygons only

    traced = crack.trace(mask, tolerance, skip)
    fill = _fill(traced.ids, traced.areas, fill)
    head = (
        f'{{"format":"polygons","size":[{h},{w}],"components":{json.dumps(bool(components))},'
        f'"tolerance":{json.dumps(float(tolerance))},"fill":{fill},"segments":['
    )
    return head.encode() + traced.segments_json(components, skip) + b"]}"


def warm(fmt: str) -> None:
    """Compile the kernels ``fmt`` encodes with (or load them from numba's on-disk cache: ~0.3 s; the
    first time after an install, a few seconds) now, not at a stream's first frame."""
    mask = np.zeros((3, 4), np.uint8)
    mask[1, 1:3] = 1
    for components in (False, True):
        encode_json(mask, fmt, components=components)


def _checked(mask: np.ndarray, fmt: str) -> np.ndarray:
    if fmt not in FORMATS:
        raise SegmentsError(f"unknown segments format {fmt!r} (expected one of {FORMATS})")
    if mask.ndim != 2:
        raise SegmentsError(f"mask must be (H, W), got shape {mask.shape}")
    return np.ascontiguousarray(mask, dtype=np.uint8)


def _kept(ids: np.ndarray, skip: tuple[int, ...]) -> list[tuple[int, int]]:
    skipped = set(skip)
    return [(k, c) for k, c in enumerate(ids.tolist()) if c not in skipped]


def _fill(ids: np.ndarray, areas: np.ndarray, fill: int | None) -> int:
    return int(ids[areas.argmax()]) if fill is None and ids.size else int(fill or 0)


def _polygons(
    mask: np.ndarray, components: bool, tolerance: float, skip: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], list, list]:
    """(ids, areas, kept (index, id), boxes as lists, each kept class's regions) of a polygons
    document, its rings as flat lists."""
    from stream.maskcodec import crack

    traced = crack.trace(mask, tolerance, skip)
    keep = _kept(traced.ids, skip)
    coords = traced.xy.reshape(-1).tolist()
    bounds = traced.bounds.tolist()
    rings = [coords[2 * a : 2 * b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    found = poly.regions(traced, rings)
    return traced.ids, traced.areas, keep, traced.boxes.tolist(), [found.get(c, []) for _, c in keep]


# ------------------------------------------------------------------------------------------ decoding


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SegmentsError(f"{what} must be an integer in {lo}..{hi}, got {v!r}"[:200])
    return v


def _rings(items: Any) -> list[Any]:
    """A segment's rings as JSON gave them (flat [x, y, ...] lists, unchecked): every polygon's exterior,
    then every polygon's holes (the order rasterize paints them in)."""
    if not isinstance(items, list):
        raise SegmentsError("a polygons segment has no 'polygons' list")
    exteriors, holes = [], []
    for p in items:
        if not isinstance(p, dict) or not isinstance(p.get("holes", []), list):
            raise SegmentsError("a polygon must be {'exterior': [...], 'holes': [[...], ...]}")
        exteriors.append(p.get("exterior"))
        holes.extend(p.get("holes", []))
    for ring, what in [(r, "exterior") for r in exteriors] + [(r, "hole") for r in holes]:
        if not isinstance(ring, list) or len(ring) % 2:
            raise SegmentsError(f"{what} must be a flat list of integer x, y pairs")
    return exteriors + holes


def _corners(rings: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """All the rings' corners (N, 2) int64 and each ring's corner count. The type test runs in C
    (set(map(type, ...))): per coordinate in Python it was most of a decode's time."""
    flat = itertools.chain.from_iterable(rings)
    if not set(map(type, flat)) <= {int}:
        raise SegmentsError("a ring must be a flat list of integer x, y pairs")
    lengths = np.array([len(r) // 2 for r in rings], np.int64)
    try:
        points = np.fromiter(itertools.chain.from_iterable(rings), np.int64, 2 * int(lengths.sum()))
    except OverflowError:
        raise SegmentsError("a ring has a coordinate beyond 64 bits") from None
    return points.reshape(-1, 2), lengths


def check(doc: Any, width: int, height: int, fmt: str) -> list[dict[str, Any]]:
    """The segments of ``doc`` after checking its shape against the header (SegmentsError)."""
    if not isinstance(doc, dict):
        raise SegmentsError("segments payload is not a JSON object")
    if doc.get("format") != fmt:
        raise SegmentsError(f"segments format {doc.get('format')!r}, header says {fmt!r}")
    if doc.get("size") != [height, width]:
        raise SegmentsError(f"segments size {doc.get('size')!r}, header says [{height}, {width}]")
    segs = doc.get("segments")
    if not isinstance(segs, list):
        raise SegmentsError("'segments' is not a list")
    for s in segs:
        if not isinstance(s, dict):
            raise SegmentsError("a segment is not an object")
        _int(s.get("category_id"), 0, 255, "category_id")
        _int(s.get("area"), 0, width * height, "area")
    return segs


def decode(doc: Any, width: int, height: int, fmt: str) -> np.ndarray:
    """The (H, W) uint8 class-id mask a segments document describes (SegmentsError when it does not).

    ``coco-rle``: the segments must cover every pixel exactly once (an exact encoding of a semantic
    mask); ``polygons``: ``fill`` first, then each segment painted in order."""
    segs = check(doc, width, height, fmt)
    if fmt == "coco-rle":
        return _decode_rle(segs, width, height)
    out = np.full((height, width), _int(doc.get("fill"), 0, 255, "fill"), np.uint8)
    budget = MAX_PAINT * width * height  # pixels painted in all: a payload of many frame-sized
    for s in segs:  # segments must not turn a few kB into minutes of rasterizing
        rings = _rings(s.get("polygons"))
        points, lengths = _corners(rings)
        if not points.size:
            continue
        lo, hi = points.min(axis=0), points.max(axis=0)
        if lo.min() < 0 or hi[0] > width or hi[1] > height:
            raise SegmentsError(f"a polygon has a corner outside 0..{width} x 0..{height}")
        budget -= int((hi[0] - lo[0]) * (hi[1] - lo[1]))
        if budget < 0:
            raise SegmentsError(f"segments paint more than {MAX_PAINT}x the frame's area")
        poly.fill_rings(points, lengths, out, s["category_id"])
    return out


def _decode_rle(segs: list[dict[str, Any]], width: int, height: int) -> np.ndarray:
    total = width * height
    starts, lengths, ids = [], [], []
    for s in segs:
        seg = s.get("segmentation")
        if (
            not isinstance(seg, dict)
            or seg.get("size") != [height, width]
            or not isinstance(seg.get("counts"), str)
        ):
            raise SegmentsError("a coco-rle segment needs 'segmentation': {'size': [H, W], 'counts': str}")
        try:
            counts = rle.string_to_counts(seg["counts"])
        except (rle.RleError, UnicodeEncodeError) as e:
            raise SegmentsError(f"category {s['category_id']}: {e}") from None
        if counts.size and counts.min() < 0 or counts[1:].size and not counts[1:].all():
            raise SegmentsError(f"category {s['category_id']}: RLE counts must be >= 1 after the first")
        if int(counts.sum()) != total:
            raise SegmentsError(
                f"category {s['category_id']}: RLE covers {int(counts.sum())} of {total} pixels"
            )
        ends = np.cumsum(counts)
        st = ends[0::2][: counts[1::2].size]  # each 1-run starts where the 0-run before it ends
        starts.append(st)
        lengths.append(counts[1::2])
        ids.append(np.full(st.size, s["category_id"], np.uint8))
    if not starts:
        raise SegmentsError("coco-rle segments cover no pixel")
    st, ln, vv = np.concatenate(starts), np.concatenate(lengths), np.concatenate(ids)
    order = np.argsort(st, kind="stable")
    st, ln, vv = st[order], ln[order], vv[order]
    # an exact semantic mask: the runs of all classes tile the image, no gap, no overlap
    if st[0] != 0 or int(ln.sum()) != total or (st[1:] != st[:-1] + ln[:-1]).any():
        raise SegmentsError("coco-rle segments overlap or leave pixels uncovered")
    return np.repeat(vv, ln).reshape(width, height).T.copy()
