"""Polygons of class-id masks: OpenCV contours on pixel edges, holes kept, simplified to a tolerance.

Coordinates are pixel *edges* (COCO's convention: pixel (x, y) is the square [x, x+1) x [y, y+1)),
not pixel centers, so at tolerance 0 the polygons describe the mask exactly and pycocotools
rasterizes them back to the same pixels. To trace edges with OpenCV, which traces pixel centers, the
mask is upsampled 2x (nearest): a border pixel X of the 2x image lies on the edge (X + 1) // 2.

Each connected region (8-connectivity, as findContours traces) is one polygon with an exterior ring
and zero or more hole rings (RETR_CCOMP); a region inside a hole is another polygon. With a
tolerance > 0 every ring is simplified with approxPolyDP (Douglas-Peucker, the tolerance in pixels).
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
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if not m.any():
        return []
    up = cv2.resize(m, (m.shape[1] * 2, m.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    rings, areas, boxes = _rings(contours, tolerance, np.array(offset, np.int32))
    hier = hierarchy[0]
    out: list[Polygon] = []
    for i in range(len(rings)):
        if hier[i][3] != -1:  # a hole: added to its exterior below
            continue
        holes = []
        area = areas[i]
        j = hier[i][2]
        while j != -1:
            holes.append(rings[j])
            area -= areas[j]
            j = hier[j][0]
        out.append(Polygon(rings[i], holes, int(area), boxes[i]))
    return out


def _rings(contours, tolerance: float, offset: np.ndarray) -> tuple[list[np.ndarray], list[int], list[tuple]]:
    """2x border pixels -> pixel-edge corners for all contours at once (a few hundred tiny rings per
    frame are common: a NumPy call per ring would cost more than finding them). Also each exact
    ring's enclosed area (shoelace: exact for a ring along pixel edges) and bounding box."""
    import cv2

    sizes = np.array([len(c) for c in contours])
    pts = (np.concatenate(contours).reshape(-1, 2) + 1) // 2
    first = np.cumsum(sizes) - sizes
    prev = np.empty_like(pts)
    prev[1:] = pts[:-1]
    prev[first] = pts[first + sizes - 1]  # a ring's first corner follows its last
    keep = (pts != prev).any(axis=1)  # neighbours in 2x often map to one corner
    kept = np.add.reduceat(keep, first)
    keep[first[kept == 0]] = True  # a ring of one repeated corner keeps it
    pts = (pts[keep] + offset).astype(np.int64)
    kept = np.maximum(kept, 1)
    first = np.cumsum(kept) - kept
    nxt = np.empty_like(pts)
    nxt[:-1] = pts[1:]
    nxt[first + kept - 1] = pts[first]  # closes each ring
    cross = pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1]
    areas = (np.abs(np.add.reduceat(cross, first)) // 2).tolist()
    lo, hi = np.minimum.reduceat(pts, first), np.maximum.reduceat(pts, first)
    boxes = [
        (int(a), int(b), int(c - a), int(d - b))
        for (a, b), (c, d) in zip(lo.tolist(), hi.tolist(), strict=True)
    ]
    rings = np.split(pts.astype(np.int32), np.cumsum(kept)[:-1])
    if tolerance > 0:
        rings = [
            cv2.approxPolyDP(r.reshape(-1, 1, 2), tolerance, True).reshape(-1, 2) if len(r) > 3 else r
            for r in rings
        ]
    return rings, areas, boxes


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
