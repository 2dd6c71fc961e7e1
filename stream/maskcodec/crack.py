"""The polygons of every class of a class-id mask in one pass, compiled with numba: crack following.

The boundary of a class's pixels runs along pixel edges ("cracks"); walking it with the class on the
left gives its rings directly in COCO's pixel-edge coordinates (pixel (x, y) is the square
[x, x+1) x [y, y+1)), so nothing is upsampled or converted afterwards. At each corner the walk looks at
the two pixels ahead: ahead-right of the class turns right (the class is 8-connected: pixels touching
at a corner are one region), else ahead-left of the class goes straight, else it turns left. A corner
where it turns is a vertex.

One raster scan over the mask's row runs finds every ring of every class where OpenCV's border
following (Suzuki) finds it: an exterior at the first pixel of a region (its left edge not walked
yet), a hole at the pixel left of the hole's first pixel (the run's right edge not walked yet). A hole
belongs to the region whose ring walked the left edge of the hole's run (that ring is the region's
exterior or one of its holes). The rings come out as findContours(RETR_CCOMP) lists them, so the
documents are byte for byte what the plain algorithm gives (tests/unit/test_maskcodec_fast.py): per
class the exteriors in reverse discovery order, each region's holes likewise. Simplification is
approxPolyDP's closed Douglas-Peucker, step for step (the same float operations, so the same
vertices: tests/unit/test_crack.py compares every ring with a plain transliteration, and with OpenCV's
where it measures to the chord segment as this does), and the document's JSON text is written by a
kernel too. The traced rings also label every row run with its region (``region_labels``: 8-connected
components of every class at once, for coco-rle's ``components``).

Why compiled: the mask publisher encodes every frame. With OpenCV (one findContours per class, the
chains turned into pixel-edge rings with NumPy, one approxPolyDP call per ring) a 480x360 frame of the
default model's output cost 2.1-2.6 ms, a fifth of the CPU a frame gets in a 185 fps pipeline on 2
cores; this costs 0.44 ms (docs/performance.md). numba compiles on first use and caches the
machine code next to this file (or in the user's cache when that is read-only);
``segments.warm`` does that before a stream's first frame.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)

# directions: 0 E, 1 S, 2 W, 3 N, clockwise on screen (y down): a right turn is +1, a left one +3
_STAMP_LIMIT = 2**31 - 1


@_jit
def _close_run(count, box, v, x0, x1, y):
    count[v] += x1 - x0
    box[v, 0] = min(box[v, 0], x0)
    box[v, 1] = min(box[v, 1], y)
    box[v, 2] = max(box[v, 2], x1 - 1)
    box[v, 3] = y


@_jit
def _runs(m, starts, count, box):
    """Row runs of ``m``: each run's flat start index into ``starts``; per value its pixel count and
    box (x0, y0, x1, y1) inclusive. Returns the number of runs."""
    h, w = m.shape
    words = w // 8 if m.strides[1] == 1 else 0
    n = 0
    for y in range(h):
        row = m[y]
        first = y * w
        starts[n] = first
        n += 1
        prev = row[0]
        x0 = 0
        # eight pixels at a time: a word XOR itself shifted by one pixel is 0 where no run starts, which
        # is almost everywhere (a frame's runs start at ~2% of its pixels)
        packed = row[: 8 * words].view(np.uint64)
        last = np.uint64(row[0])
        for k in range(words):
            word = packed[k]
            diff = word ^ ((word << np.uint64(8)) | last)
            last = word >> np.uint64(56)
            if diff == 0:
                continue
            for j in range(8):
                if (diff >> np.uint64(8 * j)) & np.uint64(255):
                    x = 8 * k + j
                    _close_run(count, box, prev, x0, x, y)
                    starts[n] = first + x
                    n += 1
                    prev = row[x]
                    x0 = x
        for x in range(max(8 * words, 1), w):
            if row[x] != prev:
                _close_run(count, box, prev, x0, x, y)
                starts[n] = first + x
                n += 1
                prev = row[x]
                x0 = x
        _close_run(count, box, prev, x0, w, y)
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _is(m, x, y, h, w, c):
    # branch-free: out of the image is never the class
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return inside & (m[min(max(y, 0), h - 1), min(max(x, 0), w - 1)] == c)


@_jit
def _ring(m, c, sx, sy, d, marks, stamp, vx, vy, nv):
    """Walk one ring of class ``c`` from corner (sx, sy) heading ``d``; its vertices go to vx/vy from
    ``nv`` on. Vertical steps stamp ``marks`` (plane 0: heading S, the west edge of the pixel to the
    east; plane 1: heading N, the east edge of the pixel to the west). Returns (new nv, area), or
    (-1, 0) when the vertex buffers are full. The step's offsets are computed from d, not looked up:
    each step depends on the last one's turn, so the loop runs at the speed of that chain."""
    h, w = m.shape
    stride = w + 1
    plane = (h + 1) * stride
    spare = marks.size - 1  # horizontal steps stamp this slot: no branch per step
    cap = vx.shape[0]
    if nv >= cap:
        return -1, 0
    vx[nv] = sx
    vy[nv] = sy
    nv += 1
    x, y = sx, sy
    area = 0
    while True:
        vertical = d & 1
        half = d >> 1  # 0 for E and S, 1 for W and N
        mid = ((d + 1) >> 1) & 1  # 1 for S and W
        at = half * plane + y * stride + x
        marks[at * vertical + spare * (1 - vertical)] = stamp
        dy = vertical * (1 - 2 * half)  # S +1, N -1
        area += x * dy
        x += (1 - vertical) * (1 - 2 * half)  # E +1, W -1
        y += dy
        if x == sx and y == sy:
            break
        # ahead-left: E (x, y-1), S (x, y), W (x-1, y), N (x-1, y-1); ahead-right: E (x, y), S (x-1, y),
        # W (x-1, y-1), N (x, y-1)
        left = _is(m, x - half, y + mid - 1, h, w, c)
        right = _is(m, x - mid, y - half, h, w, c)
        turn = (d + 3 - 2 * right - 3 * left * (1 - right)) & 3  # right: +1, else left: 0, else +3
        if nv >= cap:
            return -1, 0
        vx[nv] = x
        vy[nv] = y
        nv += turn != d
        d = turn
    return nv, abs(area)


@numba.njit(cache=True, nogil=True, inline="always")
def _run(starts, k, nruns, h, w):
    """Run k's row and its pixels [x, x1) (runs never cross a row end; the next one starts at x1)."""
    s = starts[k]
    y = s // w
    x = s - y * w
    end = starts[k + 1] if k + 1 < nruns else h * w
    return y, x, min(x + end - s, w)


@_jit
def _trace(m, wanted, starts, nruns, marks, base, vx, vy, first, cls, parent, area):
    """Every ring of every wanted class, in discovery order. Returns (vertices, rings); rings -1: the
    ring tables are full, -2: the vertex buffers are (the caller grows them and calls again)."""
    h, w = m.shape
    stride = w + 1
    plane = (h + 1) * stride
    nr = 0
    nv = 0
    for k in range(nruns):
        y, x, x1 = _run(starts, k, nruns, h, w)
        c = m[y, x]
        if not wanted[c]:
            continue
        for kind in range(2):
            if kind == 0:  # exterior: the run's west edge not walked yet
                if marks[y * stride + x] > base:
                    continue
                sx, sy, d = x, y, 1
            else:  # hole: its east edge (walked heading N from the corner below) not walked yet
                if x1 >= w or marks[plane + (y + 1) * stride + x1] > base:
                    continue
                sx, sy, d = x1, y, 0
            if nr >= cls.shape[0]:
                return nv, -1
            first[nr] = nv
            cls[nr] = c
            if kind == 0:
                parent[nr] = -1
            else:
                q = marks[y * stride + x] - base - 1  # the ring that walked the run's west edge
                parent[nr] = q if parent[q] == -1 else parent[q]
            got, a = _ring(m, c, sx, sy, d, marks, base + nr + 1, vx, vy, nv)
            if got < 0:
                return nv, -2
            nv = got
            area[nr] = a
            nr += 1
    first[nr] = nv
    return nv, nr


@_jit
def _approx_closed(px, py, n, eps2, ox, oy, stack):
    """approxPolyDP(closed) of the n points px/py into ox/oy; returns the count. Written to give
    OpenCV's vertices exactly (its 5.x algorithm): the same start search, split order and float
    operations, so the documents do not depend on the OpenCV installed."""
    # 1. about the two farthest points: three rounds, each from the last round's farthest point
    pos = 0
    far = 0
    small = False
    for _ in range(3):
        pos = pos + far if pos + far < n else pos + far - n
        x0, y0 = px[pos], py[pos]
        best = 0.0
        q = pos
        top_dist = 0  # integers: exact, as OpenCV's doubles are at these magnitudes
        for j in range(1, n):
            q = q + 1 if q + 1 < n else 0  # (pos + j) % n without a division
            dx = np.int64(px[q] - x0)
            dy = np.int64(py[q] - y0)
            dist = dx * dx + dy * dy
            if dist > top_dist:
                top_dist = dist
                far = j
        best = float(top_dist)
        small = best <= eps2
    nout = 0
    top = 0
    if small:
        ox[0] = px[pos]
        oy[0] = py[pos]
        nout = 1
    else:
        mid = pos + far if pos + far < n else pos + far - n
        stack[0, 0] = mid
        stack[0, 1] = pos
        stack[1, 0] = pos
        stack[1, 1] = mid
        top = 2
    # 2. split each piece at its farthest point from the segment (not the line through it, as OpenCV
    # measures since opencv/opencv#28119) until all are within the tolerance (squared, times length²)
    split = 0
    while top > 0:
        top -= 1
        s, e = stack[top, 0], stack[top, 1]
        xs, ys = px[s], py[s]
        xe, ye = px[e], py[e]
        q = s + 1 if s + 1 < n else 0
        if q != e:
            dx = np.int64(xe - xs)
            dy = np.int64(ye - ys)
            length2 = dx * dx + dy * dy
            flen2 = float(length2)
            best = 0.0
            while q != e:
                ax, ay = np.int64(px[q] - xs), np.int64(py[q] - ys)
                along = ax * dx + ay * dy
                if along < 0:
                    dist = float(ax * ax + ay * ay) * flen2
                elif along > length2:
                    bx, by = np.int64(px[q] - xe), np.int64(py[q] - ye)
                    dist = float(bx * bx + by * by) * flen2
                else:
                    cross = float(ay * dx - ax * dy)
                    dist = cross * cross
                if dist > best:
                    best = dist
                    split = q
                q = q + 1 if q + 1 < n else 0
            keep = best <= eps2 * flen2
        else:
            keep = True
        if keep:
            ox[nout] = xs
            oy[nout] = ys
            nout += 1
        else:
            stack[top, 0] = split
            stack[top, 1] = e
            stack[top + 1, 0] = s
            stack[top + 1, 1] = split
            top += 2
    # 3. OpenCV's clean-up: drop a vertex nearly on the line of its neighbours (diagonal lines only)
    count = nout
    if count <= 2:
        return count
    rd = count - 1
    x0, y0 = ox[rd], oy[rd]
    rd = 0
    wr = 0
    x1, y1 = ox[rd], oy[rd]
    rd = 1 % count
    i = 0
    while i < count and nout > 2:
        x2, y2 = ox[rd], oy[rd]
        rd = (rd + 1) % count
        dx = float(x2 - x0)
        dy = float(y2 - y0)
        dist = abs((x1 - x0) * dy - (y1 - y0) * dx)
        inner = float((x1 - x0) * (x2 - x1) + (y1 - y0) * (y2 - y1))
        if dist * dist <= 0.5 * eps2 * (dx * dx + dy * dy) and dx != 0 and dy != 0 and inner >= 0:
            nout -= 1
            ox[wr] = x2
            oy[wr] = y2
            x0, y0 = x2, y2
            wr = (wr + 1) % count
            x1, y1 = ox[rd], oy[rd]
            rd = (rd + 1) % count
            i += 2
            continue
        ox[wr] = x1
        oy[wr] = y1
        x0, y0 = x1, y1
        wr = (wr + 1) % count
        x1, y1 = x2, y2
        i += 1
    return nout


@_jit
def _finish(vx, vy, first, nr, eps2, ox, oy, out_first, boxes, stack):
    """Simplify every ring (eps2 > 0) into ox/oy and measure each ring's exact box (x, y, w, h)."""
    no = 0
    for r in range(nr):
        a, b = first[r], first[r + 1]
        x0, y0, x1, y1 = vx[a], vy[a], vx[a], vy[a]
        for i in range(a + 1, b):
            x0 = min(x0, vx[i])
            x1 = max(x1, vx[i])
            y0 = min(y0, vy[i])
            y1 = max(y1, vy[i])
        boxes[r, 0] = x0
        boxes[r, 1] = y0
        boxes[r, 2] = x1 - x0
        boxes[r, 3] = y1 - y0
        out_first[r] = no
        if eps2 > 0:
            no += _approx_closed(vx[a:b], vy[a:b], b - a, eps2, ox[no:], oy[no:], stack)
        else:
            ox[no : no + b - a] = vx[a:b]
            oy[no : no + b - a] = vy[a:b]
            no += b - a
    out_first[nr] = no
    return no


@_jit
def _digits(buf, at, v):
    """Write the decimal digits of v at buf[at:]; returns the new end."""
    if v < 0:
        buf[at] = 45  # -
        at += 1
        v = -v
    n = 1
    t = v
    while t >= 10:
        t //= 10
        n += 1
    for k in range(n - 1, -1, -1):
        buf[at + k] = 48 + v % 10
        v //= 10
    return at + n


@_jit
def _ring_text(buf, at, ox, oy, a, b):
    buf[at] = 91  # [
    at += 1
    for i in range(a, b):
        if i > a:
            buf[at] = 44  # ,
            at += 1
        at = _digits(buf, at, ox[i])
        buf[at] = 44
        at += 1
        at = _digits(buf, at, oy[i])
    buf[at] = 93  # ]
    return at + 1


# the fixed parts of a segment's JSON text (global arrays: numba compiles them in as constants)
_CATEGORY = np.frombuffer(b'{"category_id":', np.uint8).copy()
_AREA = np.frombuffer(b',"area":', np.uint8).copy()
_BBOX = np.frombuffer(b',"bbox":[', np.uint8).copy()
_POLYGONS = np.frombuffer(b'],"polygons":[', np.uint8).copy()
_EXTERIOR = np.frombuffer(b'{"exterior":', np.uint8).copy()
_HOLES = np.frombuffer(b',"holes":[', np.uint8).copy()


@_jit
def _put(buf, at, text):
    for k in range(text.size):
        buf[at + k] = text[k]
    return at + text.size


@_jit
def _region_text(buf, at, r, ox, oy, out_first, nh, hole):
    """{"exterior":[...],"holes":[[...],...]} of the region whose exterior is ring r."""
    at = _put(buf, at, _EXTERIOR)
    at = _ring_text(buf, at, ox, oy, out_first[r], out_first[r + 1])
    at = _put(buf, at, _HOLES)
    for t in range(nh[r], nh[r + 1]):
        if t > nh[r]:
            buf[at] = 44  # ,
            at += 1
        at = _ring_text(buf, at, ox, oy, out_first[hole[t]], out_first[hole[t] + 1])
    buf[at] = 93  # ]
    buf[at + 1] = 125  # }
    return at + 2


@_jit
def _segment_head(buf, at, c, a, x, y, w, h):
    """{"category_id":c,"area":a,"bbox":[x,y,w,h],"polygons":["""
    at = _put(buf, at, _CATEGORY)
    at = _digits(buf, at, c)
    at = _put(buf, at, _AREA)
    at = _digits(buf, at, a)
    at = _put(buf, at, _BBOX)
    at = _digits(buf, at, x)
    buf[at] = 44
    at = _digits(buf, at + 1, y)
    buf[at] = 44
    at = _digits(buf, at + 1, w)
    buf[at] = 44
    at = _digits(buf, at + 1, h)
    return _put(buf, at, _POLYGONS)


@_jit
def _segments(cls, parent, area, box, nr, ox, oy, out_first, ids, areas, boxes, wanted, components, buf):
    """The "segments" list of a polygons document as compact JSON text into buf (returns its length),
    byte for byte what segments.encode() + json.dumps(separators=(",", ":")) write: per class (or per
    region with ``components``) the regions in findContours(RETR_CCOMP) order, the segments by area,
    largest first, ties in class order."""
    # regions: exteriors per class and holes per exterior, both in reverse discovery order
    nx = np.zeros(257, np.int64)
    nh = np.zeros(nr + 1, np.int64)
    for r in range(nr):
        if parent[r] == -1:
            nx[cls[r] + 1] += 1
        else:
            nh[parent[r] + 1] += 1
    nx = np.cumsum(nx)
    nh = np.cumsum(nh)
    ext = np.empty(nx[256], np.int64)
    hole = np.empty(nh[nr], np.int64)
    fx = nx[:256].copy()
    fh = nh[:nr].copy()
    for r in range(nr - 1, -1, -1):
        if parent[r] == -1:
            ext[fx[cls[r]]] = r
            fx[cls[r]] += 1
        else:
            hole[fh[parent[r]]] = r
            fh[parent[r]] += 1
    # the segments in class order (regions in CCOMP order within a class), then stably by area
    if components:
        seg = ext
        key = np.empty(seg.size, np.int64)
        for k in range(seg.size):
            r = seg[k]
            key[k] = -area[r]
            for t in range(nh[r], nh[r + 1]):
                key[k] += area[hole[t]]
    else:
        kept = 0
        for k in range(ids.size):
            kept += wanted[ids[k]]
        seg = np.empty(kept, np.int64)
        key = np.empty(kept, np.int64)
        kept = 0
        for k in range(ids.size):
            if wanted[ids[k]]:
                seg[kept] = k
                key[kept] = -areas[k]
                kept += 1
    order = np.argsort(key, kind="mergesort")
    at = 0
    for j in range(order.size):
        if j:
            buf[at] = 44
            at += 1
        if components:
            r = seg[order[j]]
            x, y, w, h = box[r, 0], box[r, 1], box[r, 2], box[r, 3]
            at = _segment_head(buf, at, cls[r], -key[order[j]], x, y, w, h)
            at = _region_text(buf, at, r, ox, oy, out_first, nh, hole)
        else:
            k = seg[order[j]]
            c = ids[k]
            x, y, w, h = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
            at = _segment_head(buf, at, c, areas[k], x, y, w, h)
            for q in range(nx[c], nx[c + 1]):
                if q > nx[c]:
                    buf[at] = 44
                    at += 1
                at = _region_text(buf, at, ext[q], ox, oy, out_first, nh, hole)
        buf[at] = 93  # ]
        buf[at + 1] = 125  # }
        at += 2
    return at


@_jit
def _label_runs(m, wanted, starts, nruns, marks, base, cls, parent, nr, labels):
    """Number every region (8-connected, wanted classes) as findContours/connectedComponents would:
    class by class, each class's regions in raster order of their first pixel; paint each run with its
    region's number (0: a class not wanted) into ``labels``; returns each number's class (index 0: -1).
    A run's region is that of the ring which walked its west edge (its region's exterior or a hole of
    it): every run's west edge is a boundary, so tracing has labelled every run already."""
    h, w = m.shape
    stride = w + 1
    per_class = np.zeros(257, np.int64)
    for r in range(nr):
        if parent[r] == -1:
            per_class[cls[r] + 1] += 1
    per_class = np.cumsum(per_class)
    number = np.zeros(nr, np.int64)
    category = np.full(per_class[256] + 1, -1, np.int64)
    for r in range(nr):  # discovery order: raster order of each region's first pixel
        if parent[r] == -1:
            per_class[cls[r]] += 1
            number[r] = per_class[cls[r]]
            category[number[r]] = cls[r]
    for k in range(nruns):
        y, x, x1 = _run(starts, k, nruns, h, w)
        c = m[y, x]
        region = 0
        if wanted[c]:
            r = marks[y * stride + x] - base - 1
            region = number[r if parent[r] == -1 else parent[r]]
        for i in range(x, x1):
            labels[y, i] = region
    return category


# ------------------------------------------------------------------------------------------ driver


@dataclass
class Traced:
    """The rings of one mask. Per value present (ascending): ``ids``, ``areas`` (pixels) and ``boxes``
    (K, 4) [x, y, w, h]. Per ring, in discovery order: ``cls``, ``parent`` (-1 for an exterior, else
    its exterior's ring index), exact ``area`` and ``box`` (x, y, w, h, of the unsimplified ring), and
    its vertices ``xy[bounds[r]:bounds[r + 1]]`` (simplified when the tolerance is > 0)."""

    ids: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    cls: np.ndarray
    parent: np.ndarray
    area: np.ndarray
    box: np.ndarray
    xy: np.ndarray
    bounds: np.ndarray

    def segments_json(self, components: bool, skip: tuple[int, ...] = ()) -> bytes:
        """The "segments" list of the polygons document, as compact JSON (segments.encode_json)."""
        n = len(self.cls)
        size = 24 * len(self.xy) + 40 * n + 120 * (len(self.ids) + n) + 16
        buf = np.empty(size, np.uint8)
        wanted = np.ones(256, np.bool_)
        wanted[list(skip)] = False
        x = np.ascontiguousarray(self.xy[:, 0])
        y = np.ascontiguousarray(self.xy[:, 1])
        args = (self.cls, self.parent, self.area, self.box, n, x, y, self.bounds)
        end = _segments(*args, self.ids, self.areas, self.boxes, wanted, components, buf)
        return buf[:end].tobytes()


class _Scratch:
    """Buffers reused from frame to frame (one set per thread and frame size): touching fresh pages
    would cost more than tracing. ``marks`` holds stamps, not flags: a mark above ``base`` was made in
    this frame, so it is never cleared (only when the stamps would overflow)."""

    def __init__(self, h: int, w: int) -> None:
        self.starts = np.empty(h * w + 1, np.int32)
        self.marks = np.zeros(2 * (h + 1) * (w + 1) + 1, np.int32)
        self.base = 0
        self.vx = np.empty(4096, np.int32)
        self.vy = np.empty(4096, np.int32)
        self.rings = 256
        self._tables()

    def _tables(self) -> None:
        n = self.rings
        self.first = np.empty(n + 1, np.int64)
        self.cls = np.empty(n, np.int64)
        self.parent = np.empty(n, np.int64)
        self.area = np.empty(n, np.int64)

    def grow_rings(self) -> None:
        self.rings *= 2
        self._tables()

    def grow_vertices(self) -> None:
        self.vx = np.empty(2 * self.vx.size, np.int32)
        self.vy = np.empty(2 * self.vy.size, np.int32)

    def restamp(self, rings: int) -> None:
        """After a frame of ``rings`` rings: the next frame's stamps start above this one's."""
        self.base += rings + 1
        if self.base > _STAMP_LIMIT - self.starts.size * 2:  # a frame has fewer rings than 2x its runs
            self.marks[:] = 0
            self.base = 0


_local = threading.local()


def _scratch(h: int, w: int) -> _Scratch:
    """This thread's buffers for frames of this size: a few sizes are kept (sinks of one stream may
    encode at different sizes), so no frame pays for fresh pages while the sizes stay the same."""
    cache = getattr(_local, "scratch", None)
    if cache is None:
        cache = _local.scratch = {}
    s = cache.get((h, w))
    if s is None:
        if len(cache) >= 4:  # the sizes changed: do not hoard
            cache.clear()
        s = cache[(h, w)] = _Scratch(h, w)
    return s


def _trace_frame(m: np.ndarray, wanted: np.ndarray, s: _Scratch, nruns: int) -> tuple[int, int, int]:
    """Trace every ring of the frame into the scratch buffers, growing them as needed: (vertices,
    rings, the stamp base the frame's marks are above). The caller calls ``s.restamp(rings)`` once
    done with the marks, so that the next frame's stamps start above them."""
    while True:
        base = s.base
        args = (s.starts, nruns, s.marks, base, s.vx, s.vy, s.first, s.cls, s.parent, s.area)
        nv, nr = _trace(m, wanted, *args)
        if nr >= 0:
            return nv, nr, base
        # a full buffer: grow it and trace the frame again (stamps above this attempt's)
        s.restamp(s.rings)
        s.grow_rings() if nr == -1 else s.grow_vertices()


def trace(mask: np.ndarray, tolerance: float = 0.0, skip: tuple[int, ...] = ()) -> Traced:
    """The rings of every class of a (H, W) uint8 class-id mask except ``skip``, simplified to
    ``tolerance`` pixels (0: exact)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = m.shape
    if h == 0 or w == 0:
        raise ValueError(f"an empty mask ({h}x{w}) has no polygons")
    wanted = np.ones(256, np.bool_)
    wanted[list(skip)] = False
    s = _scratch(h, w)
    count = np.zeros(256, np.int64)
    box = np.empty((256, 4), np.int64)
    box[:, :2] = (w, h)
    box[:, 2:] = -1
    nruns = _runs(m, s.starts, count, box)
    nv, nr, _ = _trace_frame(m, wanted, s, nruns)
    s.restamp(nr)
    ids = np.flatnonzero(count)
    boxes = box[ids]
    boxes[:, 2:] -= boxes[:, :2] - 1
    ox = np.empty(nv, np.int32)
    oy = np.empty(nv, np.int32)
    bounds = np.empty(nr + 1, np.int64)
    ring_box = np.empty((nr, 4), np.int64)
    stack = np.empty((max(nv, 2), 2), np.int64)
    eps2 = float(tolerance) ** 2
    no = _finish(s.vx, s.vy, s.first, nr, eps2, ox, oy, bounds, ring_box, stack)
    return Traced(
        ids=ids,
        areas=count[ids],
        boxes=boxes,
        cls=s.cls[:nr].copy(),
        parent=s.parent[:nr].copy(),
        area=s.area[:nr].copy(),
        box=ring_box,
        xy=np.stack([ox[:no], oy[:no]], axis=1),
        bounds=bounds,
    )


def region_labels(mask: np.ndarray, skip: tuple[int, ...] = ()) -> tuple[np.ndarray, list[int]]:
    """The 8-connected regions of every class except ``skip`` as a label image (H, W) int32 (0: a
    skipped class) and each label's class (index 0: -1), numbered as one connectedComponents call per
    class would, class by class: the traced rings already know every run's region."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = m.shape
    wanted = np.ones(256, np.bool_)
    wanted[list(skip)] = False
    s = _scratch(h, w)
    count = np.zeros(256, np.int64)
    box = np.empty((256, 4), np.int64)
    nruns = _runs(m, s.starts, count, box)
    _, nr, base = _trace_frame(m, wanted, s, nruns)
    labels = np.empty((h, w), np.int32)
    category = _label_runs(m, wanted, s.starts, nruns, s.marks, base, s.cls, s.parent, nr, labels)
    s.restamp(nr)
    return labels, category.tolist()
