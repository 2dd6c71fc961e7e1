"""Polygons of class-id masks: OpenCV contours on pixel edges, holes kept, simplified to a tolerance.

Coordinates are pixel *edges* (COCO's convention: pixel (x, y) is the square [x, x+1) x [y, y+1)),
not pixel centers, so at tolerance 0 the polygons describe the mask exactly and pycocotools
rasterizes them back to the same pixels. OpenCV's findContours traces pixel *centers*; each traced
chain is turned into its pixel-edge ("crack") boundary by a table lookup over consecutive chain steps
(``_rings``). That gives exactly the corners of the simpler way this module used before, tracing a
2x (nearest) upsampled mask and mapping its border pixels X to the edges (X + 1) // 2, ring for ring
and from the same start corner, while OpenCV traces a quarter of the pixels.

Each connected region (8-connectivity, as findContours traces) is one polygon with an exterior ring
and zero or more hole rings (RETR_CCOMP); a region inside a hole is another polygon. With a
tolerance > 0 every ring is simplified with approxPolyDP (Douglas-Peucker, the tolerance in pixels).

Cost (the mask publisher encodes every frame): each class is traced once, at 1x, only in its bounding
box (found for all classes in one pass over the mask's runs); the vertices, areas and boxes of all
rings of all classes are computed in one vectorized pass; rectangles, about half of a frame's rings,
are simplified without calling OpenCV. Python loops run over rings, never over points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

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
    stats: bool = True,
    as_json: bool = False,
) -> list[list[tuple[Any, list[Any], int, tuple[int, int, int, int]]]]:
    """Polygons of every class in ``ids`` of a class-id mask (H, W) uint8, in one pass per frame.

    ``boxes`` holds each class's pixel bounding box (x, y, w, h): only that crop is traced. Per class,
    a list of regions (exterior as a flat [x0, y0, x1, y1, ...] list, holes likewise, exact area,
    exact bbox (x, y, w, h) in pixels; with ``stats=False`` area 0 and bbox (0, 0, 0, 0), for a caller
    that needs no per-region figures), in OpenCV's tracing order. ``as_json``: each ring is instead
    the str json.dumps gives its list (written for all rings at once, for segments.encode_json). The
    corners of all classes are converted in one vectorized pass: per-class or per-ring NumPy calls
    would cost more than tracing (a frame has a few hundred small rings)."""
    import cv2

    if not ids:
        return []
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    contours: list[np.ndarray] = []
    hier: list[np.ndarray] = []
    per_class: list[int] = []  # contours found per class
    for c, (x, y, bw, bh) in zip(ids, boxes, strict=True):
        found, hierarchy = cv2.findContours(
            np.equal(m[y : y + bh, x : x + bw], c).view(np.uint8),  # cv2.compare takes 1x1 for a scalar
            cv2.RETR_CCOMP,
            cv2.CHAIN_APPROX_NONE,  # every traced pixel: _rings needs each step
            offset=(x, y),  # the caller's offset comes after: _rings needs corners >= 0
        )
        per_class.append(len(found))
        if found:
            contours.extend(found)
            hier.append(hierarchy[0])
    if not contours:
        return [[] for _ in ids]
    links_a = np.concatenate(hier)  # next, previous, first child, parent (per class)
    flat, bounds, areas, rboxes = _rings(contours, links_a[:, 3] != -1, tolerance, stats)
    if offset != (0, 0):
        flat = flat + np.array(offset, np.int32)
        if stats:
            rboxes = [(a + offset[0], b + offset[1], c, d) for a, b, c, d in rboxes]
    if as_json:
        rings: list[Any] = _json_rings(flat, bounds)
    else:
        coords = flat.reshape(-1).tolist()
        rings = [
            coords[2 * a : 2 * b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
        ]
    links = links_a.tolist()
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


# Pixel-center chains -> pixel-edge rings. findContours keeps the region on the left of its steps
# (exteriors run counterclockwise on screen, y down; holes clockwise), so the pixel-edge ("crack")
# boundary lies on their right: a step from P to its 8-neighbour P + d crosses it at the corner of P
# shared with P + d on the step's right side (a diagonal step: their one common corner). The boundary
# enters P at that corner of the step in and leaves at that of the step out, walking P's edges
# counterclockwise; at a spur's tip the step out reverses the step in and the walk goes round the tip.
# A walked corner is a vertex unless the boundary goes straight on there: only a walk's last corner
# can, when the step out is axial and the next pixel walks on (a next pixel that walks nothing is a
# concave corner, where the boundary turns). So each pixel's vertices depend on three steps: into it,
# out of it, out of the next pixel, and come from one table.

_CORNERS = [(0, 0), (0, 1), (1, 1), (1, 0)]  # a pixel's corners counterclockwise: TL, BL, BR, TR
_STEPS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # (0, 0): a one-pixel ring
# Points are handled as one int64 per (x, y) int32 pair (a view: no copy), so a step is one
# subtraction; v = step + _BIAS holds dx + 1 and dy + 1 in its two halves, and (v + (v >> 30)) & 15
# tells the nine steps apart (codes 0..10) in three cheap operations, whatever the byte order.
_SX, _SY = (np.array(v, np.int32).view(np.int64).item() for v in ((1, 0), (0, 1)))
_BIAS = _SX + _SY


def _step_code(v: int) -> int:
    return (v + (v >> 30)) & 15


_CODE = {(dx, dy): _step_code(dx * _SX + dy * _SY + _BIAS) for dx, dy in _STEPS}
assert sorted(_CODE.values()) == [0, 1, 2, 4, 5, 6, 8, 9, 10]


def _crack_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indexed by (code in * 11 + code out) * 11 + code after: the pixel's vertices as packed offsets
    (K, 4) int64, which of the 4 are used (K, 4) bool, and how many (K,); indexed by code in * 11 +
    code out: where the walk passes the pixel's TL and TR corners (K, 2), where the 2x trace starts
    an exterior and a hole."""
    leave = {(0, 0): 3}  # a one-pixel ring: all four corners, from TL
    enter = {(0, 0): 3}
    for (dx, dy), k in {(1, 0): 2, (1, 1): 2, (0, 1): 1, (-1, 1): 1}.items():
        for sign in (1, -1):  # the opposite step leaves at the opposite corner
            leave[(sign * dx, sign * dy)] = (k + 2 * (sign < 0)) % 4
    for (dx, dy), k in leave.items():
        if (dx, dy) != (0, 0):  # that corner seen from P + d
            enter[(dx, dy)] = _CORNERS.index((_CORNERS[k][0] - dx, _CORNERS[k][1] - dy))

    def walk(a: tuple[int, int], b: tuple[int, int]) -> list[int]:
        n = (leave[b] - enter[a]) % 4
        if n == 0 and a == (-b[0], -b[1]):  # a diagonal tip (or a one-pixel ring): all round
            n = 4
        return [(enter[a] + 1 + k) % 4 for k in range(n)]

    offsets = np.zeros((11**3, 4), np.int64)
    used = np.zeros((11**3, 4), bool)
    starts = np.zeros((11**2, 2), np.int64)
    for a in _STEPS:
        for b in _STEPS:
            corners = walk(a, b)
            pair = _CODE[a] * 11 + _CODE[b]
            starts[pair] = [corners.index(k) if k in corners else 0 for k in (0, 3)]
            for c in _STEPS:
                i = pair * 11 + _CODE[c]
                straight = 0 in b and b != (0, 0) and bool(walk(b, c))
                for j, k in enumerate(corners):
                    offsets[i, j] = _CORNERS[k][0] * _SX + _CORNERS[k][1] * _SY
                    used[i, j] = not (straight and j == len(corners) - 1)
    return offsets, used, used.sum(axis=1), starts


_OFFSETS, _USED, _NUSED, _STARTS = _crack_tables()
_USED4 = _USED.view(np.int32).reshape(-1)  # a row of 4 bools as one int32: a 1-D take is fastest


def _rings(
    contours: list[np.ndarray], holes: np.ndarray, tolerance: float, stats: bool = True
) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Traced pixel-center rings -> pixel-edge rings, all at once (``holes``: which are hole rings).
    Returns the vertices of all rings (M, 2) int32, each ring's bounds in them (R + 1,), and each
    exact ring's enclosed area and bounding box (x, y, w, h) (``stats=False``: 0 and (0, 0, 0, 0)).

    A ring starts where tracing the 2x mask starts it (the document stays what it was): at the
    top-left corner of its first traced pixel (an exterior) or at the top-right one (a hole: the hole
    is to the right of that pixel); that corner is one the first pixel walks."""
    sizes = np.fromiter(map(len, contours), np.int64, len(contours))
    xy = np.concatenate(contours).view(np.int64).reshape(-1)
    first = np.cumsum(sizes) - sizes
    last = first + sizes - 1
    code = np.empty_like(xy)  # of each step out: to the next point, the last one to the first
    np.subtract(xy[1:], xy[:-1], out=code[:-1])
    code[last] = xy[first] - xy[last]
    code += _BIAS
    code += code >> 30  # _step_code, in place
    code &= 15
    pair = np.empty_like(code)
    pair[1:] = code[:-1]
    pair[first] = code[last]
    pair *= 11
    pair += code
    key = pair * 11
    key[:-1] += code[1:]
    key[last] = pair[last] * 11 + code[first]
    corners = _OFFSETS.take(key, axis=0)
    corners += xy[:, None]
    vxy = np.compress(_USED4.take(key).view(bool), corners.reshape(-1))  # faster than corners[mask]
    kept = np.add.reduceat(_NUSED.take(key), first)
    vfirst = np.cumsum(kept) - kept
    shift = _STARTS[pair[first], holes.astype(np.intp)]
    if shift.any():  # rotate those rings: vertex i of a ring is the walk's (i + shift) % kept
        src = np.repeat(shift, kept)
        src += np.arange(vxy.size)
        wrap = src >= np.repeat(vfirst + kept, kept)
        np.subtract(src, np.repeat(kept, kept), out=src, where=wrap)  # no boolean indexing: cheaper
        vxy = vxy[src]
    pts = vxy.view(np.int32).reshape(-1, 2)
    if stats:
        # area: the sum of x * dy over the edges, exact for axis-aligned ones
        x, y = pts[:, 0], pts[:, 1]
        dy = np.empty_like(y)
        np.subtract(y[1:], y[:-1], out=dy[:-1])
        vlast = vfirst + kept - 1
        dy[vlast] = y[vfirst] - y[vlast]
        dy *= x
        areas = np.abs(np.add.reduceat(dy, vfirst, dtype=np.int64)).tolist()
        lo, hi = np.minimum.reduceat(pts, vfirst), np.maximum.reduceat(pts, vfirst)
        boxes = [(a, b, c - a, d - b) for (a, b), (c, d) in zip(lo.tolist(), hi.tolist(), strict=True)]
    else:
        areas, boxes = [0] * len(contours), [(0, 0, 0, 0)] * len(contours)
    bounds = np.append(vfirst, pts.shape[0])
    if tolerance > 0:
        pts, bounds = _simplify(pts, bounds, tolerance)
    return pts, bounds, areas, boxes


def _simplify(pts: np.ndarray, bounds: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """approxPolyDP (closed) on every ring, one call per ring (grouping the many rings of the same
    small shape to simplify each shape once measured slower than calling OpenCV), except for the
    rectangles (a ring of 4 corners on pixel edges is one; about half of a frame's rings): their
    result is computed here, with OpenCV's tests on the same float operations, so it is byte for byte
    approxPolyDP's (tests/unit/test_maskcodec_fast.py checks it against OpenCV): the ring starts at a
    corner C0 and C2 is the opposite one; OpenCV keeps C0 alone when C2 is within the tolerance of it,
    else C0 and C2 when C1 and C3 are within the tolerance of the diagonal, else all four."""
    import cv2

    first, last = bounds[:-1], bounds[1:]
    rect = last - first == 4
    d = (pts[np.where(rect, first + 2, first)] - pts[first]).astype(np.int64)  # C2 - C0
    diag2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
    span2 = (d[:, 0] * d[:, 1]).astype(np.float64) ** 2  # (distance of C1 from C0-C2 * |C0-C2|)^2
    eps2 = tolerance * tolerance  # as approxPolyDP squares it
    one = diag2 <= eps2
    two = ~one & (span2 <= eps2 * diag2)
    stop = np.where(rect & one, first + 1, last).tolist()
    step = np.where(rect, np.where(two, 2, 1), 0).tolist()  # 0: not a rectangle, call OpenCV
    p3 = pts.reshape(-1, 1, 2)
    out = [
        p3[a:b:k] if k else cv2.approxPolyDP(p3[a:b], tolerance, True)
        for a, b, k in zip(first.tolist(), stop, step, strict=True)
    ]
    sizes = np.fromiter(map(len, out), np.int64, len(out))
    return np.concatenate(out).reshape(-1, 2), np.concatenate(([0], np.cumsum(sizes)))


@lru_cache(maxsize=4)
def _number_table(limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The JSON text of every int 0 <= v < ``limit``, one 8-byte row each: a slot for a leading '[',
    the digits, ','; which bytes of the row are used (as one uint64, the leading slot not); and the
    digit count."""
    v = np.arange(limit, dtype=np.int64)
    digits = np.ones(limit, np.int64)
    for p in range(1, 7):  # limit <= 10**6: at most 6 digits, so 1 + 6 + 1 bytes fit a row
        digits += v >= 10**p
    rows = np.zeros((limit, 8), np.uint8)
    used = np.zeros((limit, 8), bool)
    for k in range(7):
        has = digits > k
        rows[has, 1 + k] = 48 + (v[has] // 10 ** (digits[has] - 1 - k)) % 10
        used[has, 1 + k] = True
    rows[v, 1 + digits] = ord(",")
    used[v, 1 + digits] = True
    return rows.view(np.uint64).reshape(-1), used.view(np.uint64).reshape(-1), digits


def _json_rings(pts: np.ndarray, bounds: np.ndarray) -> list[str]:
    """Each ring of ``pts`` (bounds as from _rings) as the text json.dumps(list) gives with
    separators (",", ":"), e.g. "[0,5,3,5]": the digits of all rings looked up and packed in one
    vectorized pass, instead of a Python list per ring for json.dumps to write number by number."""
    values = pts.reshape(-1)
    limit = 1 << max(10, int(values.max(initial=0)).bit_length())  # a few cached tables, not one a frame
    if limit > 10**6 or values.min(initial=0) < 0:  # not corners in a frame (an offset crop): plainly
        coords = values.tolist()
        return [
            "[" + ",".join(map(str, coords[2 * a : 2 * b])) + "]"
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
        ]
    table, table_used, digits = _number_table(limit)
    rows = table.take(values).view(np.uint8).reshape(-1, 8)
    used = table_used.take(values).view(bool).reshape(-1, 8)
    first, last = 2 * bounds[:-1], 2 * bounds[1:] - 1  # each ring's first and last number
    rows[first, 0] = ord("[")
    used[first, 0] = True
    length = digits.take(values)
    rows.reshape(-1)[8 * last + 1 + length[last]] = ord("]")  # instead of its ','
    text = np.compress(used.reshape(-1), rows.reshape(-1)).tobytes().decode("ascii")
    length += 1  # and the ',' (or ']')
    length[first] += 1  # and the '['
    ends = np.cumsum(length)
    starts = np.concatenate(([0], ends[last[:-1]])).tolist()
    return [text[a:b] for a, b in zip(starts, ends[last].tolist(), strict=True)]


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
