"""Polygons of class-id masks on pixel edges, holes kept, simplified to a tolerance.

Coordinates are pixel *edges* (COCO's convention: pixel (x, y) is the square [x, x+1) x [y, y+1)),
not pixel centers, so at tolerance 0 the polygons describe the mask exactly and pycocotools
rasterizes them back to the same pixels. Each connected region (8-connectivity, as OpenCV's
findContours traces) is one polygon with an exterior ring and zero or more hole rings (RETR_CCOMP);
a region inside a hole is another polygon. With a tolerance > 0 every ring is simplified as
approxPolyDP does (Douglas-Peucker, the tolerance in pixels).

The rings of all classes come from one compiled pass over the mask (stream/maskcodec/crack.py); they
are byte for byte those of the plain algorithm (trace the 2x upsampled mask with findContours, map its
border pixels X to the edges (X + 1) // 2, simplify with approxPolyDP): tests/unit/test_maskcodec_fast.py.
This module groups them into regions and paints polygons back (``rasterize``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stream.maskcodec import crack


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
    from stream.maskcodec import crack  # numba: loaded only where polygons are made

    m = (np.asarray(mask) != 0).view(np.uint8)
    if not m.any():
        return []
    traced = crack.trace(m, tolerance, skip=(0,))
    xy = traced.xy + np.array(offset, np.int32)
    rings = [xy[a:b] for a, b in zip(traced.bounds[:-1].tolist(), traced.bounds[1:].tolist(), strict=True)]
    (found,) = regions(traced, rings, offset).values()
    return [Polygon(e, holes, area, bbox) for e, holes, area, bbox in found]


def regions(
    traced: crack.Traced, rings: list[Any], offset: tuple[int, int] = (0, 0)
) -> dict[int, list[tuple[Any, list[Any], int, tuple[int, int, int, int]]]]:
    """Per class, its regions as findContours(RETR_CCOMP) lists them (the exterior found last comes
    first, holes likewise): (exterior, holes, exact area, exact bbox (x, y, w, h) + ``offset``), the
    rings taken from ``rings`` (one per traced ring: arrays, lists or JSON text)."""
    cls, parent = traced.cls.tolist(), traced.parent.tolist()
    area, box = traced.area.tolist(), traced.box.tolist()
    holes: dict[int, list[int]] = {}
    exteriors: list[int] = []
    for r in range(len(cls) - 1, -1, -1):
        if parent[r] == -1:
            exteriors.append(r)
        else:
            holes.setdefault(parent[r], []).append(r)
    out: dict[int, list] = {}
    for r in exteriors:
        inner = holes.get(r, ())
        x, y, w, h = box[r]
        out.setdefault(cls[r], []).append(
            (
                rings[r],
                [rings[k] for k in inner],
                area[r] - sum(area[k] for k in inner),
                (x + offset[0], y + offset[1], w, h),
            )
        )
    return out


def rasterize(
    polygons: list[Polygon], height: int, width: int, out: np.ndarray | None = None, value: int = 1
) -> np.ndarray:
    """Paint ``value`` where the polygons cover a pixel's center (even-odd rule over every ring, so a
    hole is empty and a region inside a hole is filled); returns (H, W) uint8 ``out``."""
    if out is None:
        out = np.zeros((height, width), np.uint8)
    rings = [p.exterior for p in polygons] + [h for p in polygons for h in p.holes]
    if not rings:
        return out
    lengths = np.array([len(r) for r in rings])
    return fill_rings(np.concatenate(rings).reshape(-1, 2), lengths, out, value)


def fill_rings(points: np.ndarray, lengths: np.ndarray, out: np.ndarray, value: int) -> np.ndarray:
    """``rasterize`` for rings given as all their (x, y) corners one after another (``points`` (N, 2))
    and each ring's corner count (``lengths``); rings of fewer than 3 corners paint nothing."""
    import cv2

    height, width = out.shape
    keep = lengths >= 3
    if not keep.all():
        points, lengths = points[np.repeat(keep, lengths)], lengths[keep]
    if not lengths.size:
        return out
    points = points.astype(np.int32)
    # only the rings' bounding box, clipped to the image (a small segment costs a small raster)
    x0, y0 = np.maximum(points.min(axis=0), 0)
    x1, y1 = np.minimum(points.max(axis=0), (width, height))
    if x1 <= x0 or y1 <= y0:
        return out
    # in a 2x grid the corners sit on even coordinates and pixel centers on odd ones, so an
    # axis-aligned edge never passes through a center: tolerance-0 polygons come back exactly
    up = np.zeros((2 * (y1 - y0), 2 * (x1 - x0)), np.uint8)
    scaled = (points - np.array([x0, y0], np.int32)) * 2
    cv2.fillPoly(up, np.split(scaled, np.cumsum(lengths[:-1])), 1)
    np.copyto(out[y0:y1, x0:x1], value, where=up[1::2, 1::2].view(bool))
    return out
