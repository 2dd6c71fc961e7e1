"""Douglas-Peucker as OpenCV's approxPolyDP (closed curves) computes it since opencv/opencv#28119
(OpenCV 5: the farthest point from the *segment*, not the line), written plainly in Python: the reference the
compiled one in stream/maskcodec/crack.py is held to, whatever OpenCV version is installed."""

from __future__ import annotations

import cv2
import numpy as np


def approx_closed(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """(N, 2) int ring -> its simplified corners (M, 2)."""
    pts = [tuple(int(v) for v in p) for p in np.asarray(ring).reshape(-1, 2)]
    n = len(pts)
    eps2 = tolerance * tolerance
    # 1. start at the last of three "farthest point from the previous start" rounds
    start, far, small = 0, 0, False
    for _ in range(3):
        start = (start + far) % n
        best = 0.0
        for j in range(1, n):
            x, y = pts[(start + j) % n]
            d = float(x - pts[start][0]) ** 2 + float(y - pts[start][1]) ** 2
            if d > best:
                best, far = d, j
        small = best <= eps2
    out: list[tuple[int, int]] = []
    if small:
        return np.array([pts[start]], np.int32)
    stack = [((start + far) % n, start), (start, (start + far) % n)]
    # 2. split a piece at the point farthest from its segment while that is beyond the tolerance
    while stack:
        s, e = stack.pop()
        (xs, ys), (xe, ye) = pts[s], pts[e]
        inner = []
        q = (s + 1) % n
        while q != e:
            inner.append(q)
            q = (q + 1) % n
        if not inner:
            out.append(pts[s])
            continue
        dx, dy = float(xe - xs), float(ye - ys)
        length2 = dx * dx + dy * dy
        best, split = 0.0, None
        for q in inner:
            ax, ay = pts[q][0] - xs, pts[q][1] - ys
            along = ax * dx + ay * dy
            if along < 0:
                d = (ax * ax + ay * ay) * length2
            elif along > length2:
                d = ((pts[q][0] - xe) ** 2 + (pts[q][1] - ye) ** 2) * length2
            else:
                d = (ay * dx - ax * dy) ** 2
            if d > best:
                best, split = d, q
        if best <= eps2 * length2:
            out.append(pts[s])
        else:
            stack += [(split, e), (s, split)]
    # 3. drop a vertex nearly on the diagonal line of its neighbours (in place, as OpenCV does)
    count = kept = len(out)
    if count <= 2:
        return np.array(out, np.int32)
    a, b = out[count - 1], out[0]
    rd, wr, i = 1 % count, 0, 0
    while i < count and kept > 2:
        c = out[rd]
        rd = (rd + 1) % count
        dx, dy = float(c[0] - a[0]), float(c[1] - a[1])
        dist = abs((b[0] - a[0]) * dy - (b[1] - a[1]) * dx)
        along = (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1])
        if dist * dist <= 0.5 * eps2 * (dx * dx + dy * dy) and dx != 0 and dy != 0 and along >= 0:
            kept -= 1
            out[wr] = a = c
            wr = (wr + 1) % count
            b = out[rd]
            rd = (rd + 1) % count
            i += 2
            continue
        out[wr] = a = b
        wr = (wr + 1) % count
        b = c
        i += 1
    return np.array(out[:kept], np.int32)


def _opencv_measures_segments() -> bool:
    # (10, 5) lies off the segment (20, 5)-(100, 0) but within 1 px of its line: older OpenCV drops it
    ring = np.array([[0, 0], [20, 5], [10, 5], [100, 0], [50, -60]], np.int32).reshape(-1, 1, 2)
    return len(cv2.approxPolyDP(ring, 1.0, True)) == 5


OPENCV_SAME = _opencv_measures_segments()


def approx(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """The reference: OpenCV when it computes the same thing (fast), else the plain version above."""
    if OPENCV_SAME:
        return cv2.approxPolyDP(np.asarray(ring, np.int32).reshape(-1, 1, 2), tolerance, True).reshape(-1, 2)
    return approx_closed(ring, tolerance)
