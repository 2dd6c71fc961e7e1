"""Polygons of class-id masks: OpenCV contours on pixel edges, holes kept, simplified to a tolerance.

Coordinates are pixel *edges* (COCO's convention: pixel (x, y) is the square [x, x+1) x [y, y+1)),
not pixel centers, so at tolerance 0 the polygons describe the mask exactly and pycocotools
rasterizes them back to the same pixels. To trace edges with OpenCV, which traces pixel centers, the
mask is upsampled 2x (nearest): a border pixel X of the 2x image lies on the edge (X + 1) // 2.

Each connected region (8-connectivity, as findContours traces) is one polygon with an exterior ring
and zero or more hole rings (RETR_CCOMP); a region inside a hole is another polygon. With a
tolerance > 0 every ring is simplified with approxPolyDP (Douglas-Peucker, the tolerance in pixels).

Cost (the mask publisher encodes every frame): a frame is upsampled once, each class is traced only in
its bounding box (found for all classes in one pass over the mask's runs), and the corners, areas and
boxes of all rings of all classes are computed in one vectorized pass; Python loops run over rings,
never over points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Polygon:
    """One connected region: ``exterior`` and ``holes`` are (N, 2) int32 arrays of (x, y) corners."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    area: int = 0  # pixels of the region (exact: measured before simplification)
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, w, h in pixels (exact)

    def to_json(self) -> dict:
        return {
            "exterior": self.exterior.reshape(-1).tolist(),
            "holes": [h.reshape(-1).tolist() for h in self.holes],
        }


def binary_polygons(
    mask: np.ndarray, tolerance: float = 0.0, offset: tuple[int, int] = (0, 0)
) -> list[Polygon]:
    """Polygons of the nonzero pixels of ``mask`` (H, W); ``offset`` (x, y) is added to every corner
    (the caller may pass a crop of a bigger mask)."""
    m = (np.asarray(mask) != 0).view(np.uint8)
    if not m.any():
        return []
    h, w = m.shape
    (found,) = class_polygons(m, [1], [(0, 0, w, h)], tolerance, offset)

    def ring(r: list[int]) -> np.ndarray:
        return np.array(r, np.int32).reshape(-1, 2)

    return [Polygon(ring(e), [ring(r) for r in holes], area, bbox) for e, holes, area, bbox in found]


def class_polygons(
    mask: np.ndarray,
    ids: list[int],
    boxes: list[tuple[int, int, int, int]],
    tolerance: float = 0.0,
    offset: tuple[int, int] = (0, 0),
) -> list[list[tuple[list[int], list[list[int]], int, tuple[int, int, int, int]]]]:
    """Polygons of every class in ``ids`` of a class-id mask (H, W) uint8, in one pass per frame.

    ``boxes`` holds each class's pixel bounding box (x, y, w, h): only that crop is traced. Per class,
    a list of regions (exterior as a flat [x0, y0, x1, y1, ...] list, holes likewise, exact area,
    exact bbox (x, y, w, h) in pixels), in OpenCV's tracing order. The mask is upsampled once for
    the frame and the corners of all classes are converted in one vectorized pass: per-class or
    per-ring NumPy calls would cost more than tracing (a frame has a few hundred small rings)."""
    import cv2

    if not ids:
        return []
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = m.shape
    # 2x nearest: pixel (x, y) becomes the 2x2 block at (2x, 2y); a crop of it is the 2x of the crop
    up = cv2.resize(m, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    contours: list[np.ndarray] = []
    hier: list[np.ndarray] = []
    per_class: list[int] = []  # contours found per class
    for c, (x, y, bw, bh) in zip(ids, boxes, strict=True):
        crop = up[2 * y : 2 * (y + bh), 2 * x : 2 * (x + bw)]
        found, hierarchy = cv2.findContours(
            cv2.compare(crop, int(c), cv2.CMP_EQ),
            cv2.RETR_CCOMP,
            cv2.CHAIN_APPROX_SIMPLE,
            offset=(2 * (x + offset[0]), 2 * (y + offset[1])),
        )
        per_class.append(len(found))
        if found:
            contours.extend(found)
            hier.append(hierarchy[0])
    if not contours:
        return [[] for _ in ids]
    flat, bounds, areas, rboxes = _rings(contours, tolerance)
    coords = flat.reshape(-1).tolist()
    rings = [coords[2 * a : 2 * b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
    links = np.concatenate(hier).tolist()  # next, previous, first child, parent (per class)
    out: list[list] = []
    first = 0
    for n in per_class:
        regions = []
        for i in range(first, first + n):
            _, _, child, parent = links[i]
            if parent != -1:  # a hole: added to its exterior below
                continue
            holes = []
            area = areas[i]
            j = child
            while j != -1:
                holes.append(rings[first + j])
                area -= areas[first + j]
                j = links[first + j][0]
            regions.append((rings[i], holes, area, rboxes[i]))
        out.append(regions)
        first += n
    return out


def _rings(contours: list[np.ndarray], tolerance: float) -> tuple[np.ndarray, np.ndarray, list, list]:
    """2x border pixels -> pixel-edge corners for all contours at once. Returns the corners of all
    rings (M, 2) int32, each ring's bounds in them (R + 1,), and each exact ring's enclosed area
    (shoelace: exact for a ring along pixel edges) and bounding box (x, y, w, h)."""
    sizes = np.fromiter(map(len, contours), np.int64, len(contours))
    pts = (np.concatenate(contours).reshape(-1, 2) + 1) // 2  # a border pixel X lies on edge (X+1)//2
    first = np.cumsum(sizes) - sizes
    xy = pts.view(np.int64).reshape(-1)  # one int64 per (x, y) pair: a point compares in one op
    prev = np.empty_like(xy)
    prev[1:] = xy[:-1]
    prev[first] = xy[first + sizes - 1]  # a ring's first corner follows its last
    keep = xy != prev  # neighbours in 2x often map to one corner
    kept = np.add.reduceat(keep, first)
    keep[first[kept == 0]] = True  # a ring of one repeated corner keeps it
    pts = pts[keep]
    kept = np.maximum(kept, 1)
    first = np.cumsum(kept) - kept
    p64 = pts.astype(np.int64)
    nxt = np.empty_like(p64)
    nxt[:-1] = p64[1:]
    nxt[first + kept - 1] = p64[first]  # closes each ring
    cross = p64[:, 0] * nxt[:, 1] - nxt[:, 0] * p64[:, 1]
    areas = (np.abs(np.add.reduceat(cross, first)) // 2).tolist()
    lo, hi = np.minimum.reduceat(pts, first), np.maximum.reduceat(pts, first)
    boxes = [(a, b, c - a, d - b) for (a, b), (c, d) in zip(lo.tolist(), hi.tolist(), strict=True)]
    bounds = np.append(first, pts.shape[0])
    if tolerance > 0:
        pts, bounds = _simplify(pts, bounds, tolerance)
    return pts, bounds, areas, boxes


def _simplify(pts: np.ndarray, bounds: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """approxPolyDP (closed) on every ring of more than 3 corners (a plain loop: grouping the many
    rings of the same small shape to simplify each shape once measured slower than calling OpenCV)."""
    import cv2

    p3 = pts.reshape(-1, 1, 2)
    out = [
        cv2.approxPolyDP(p3[a:b], tolerance, True) if b - a > 3 else p3[a:b]
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    ]
    sizes = np.fromiter(map(len, out), np.int64, len(out))
    return np.concatenate(out).reshape(-1, 2), np.concatenate(([0], np.cumsum(sizes)))


def rasterize(
    polygons: list[Polygon], height: int, width: int, out: np.ndarray | None = None, value: int = 1
) -> np.ndarray:
    """Paint ``value`` where the polygons cover a pixel's center (even-odd rule over every ring, so a
    hole is empty and a region inside a hole is filled); returns (H, W) uint8 ``out``."""
    import cv2

    if out is None:
        out = np.zeros((height, width), np.uint8)
    rings = [p.exterior for p in polygons] + [h for p in polygons for h in p.holes]
    rings = [r.astype(np.int32) for r in rings if len(r) >= 3]
    if not rings:
        return out
    # only the rings' bounding box, clipped to the image (a small segment costs a small raster)
    allpts = np.concatenate(rings)
    x0, y0 = np.maximum(allpts.min(axis=0), 0)
    x1, y1 = np.minimum(allpts.max(axis=0), (width, height))
    if x1 <= x0 or y1 <= y0:
        return out
    origin = np.array([x0, y0], np.int32)
    # in a 2x grid the corners sit on even coordinates and pixel centers on odd ones, so an
    # axis-aligned edge never passes through a center: tolerance-0 polygons come back exactly
    up = np.zeros((2 * (y1 - y0), 2 * (x1 - x0)), np.uint8)
    cv2.fillPoly(up, [(r - origin) * 2 for r in rings], 1)
    out[y0:y1, x0:x1][up[1::2, 1::2].astype(bool)] = value
    return out
