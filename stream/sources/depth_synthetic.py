"""``--depth synthetic://?size=WxH&fps=N``: depth that matches the synthetic colour pattern, so an RGB-D
demo or test needs no files.

The scene of stream.sources.synthetic seen by a depth camera: the background is a wall tilting towards
the camera from ``far_mm`` (top row) to 60 % of it (bottom row), the bouncing square is a box at
``near_mm``, and a 2-pixel shadow right of the box has no measurement (0), as a real sensor's
occlusion does. Give it the colour source's size and rate; frame k is the depth of colour frame k.

Recorded (``live=0``, the default with a recorded colour source): frame k is stamped k / fps and frames
come as fast as they are asked for. Live (``live=1``, the default with a live colour source): the frame
next frame already due is returned, stamped with the wall-clock time it arrived (was due), as a depth
camera's driver queue would give it; a reader more than a second behind loses the older frames.
"""

from __future__ import annotations

import time

import numpy as np

from stream.sources.base import SourceError
from stream.sources.depth import DepthFrame, DepthInfo, DepthSource
from stream.sources.synthetic import square_at


class SyntheticDepth(DepthSource):
    def __init__(
        self,
        size: tuple[int, int] = (640, 480),
        fps: float = 30.0,
        frames: int = 0,
        live: bool | None = None,
        near_mm: float = 800.0,
        far_mm: float = 4000.0,
        uri: str | None = None,
    ) -> None:
        self.size = size
        self.fps = fps
        self.frames = frames  # 0 = endless
        self.live = live
        self.near_mm = near_mm
        self.far_mm = far_mm
        self.uri = uri or f"synthetic://?size={size[0]}x{size[1]}&fps={fps:g}"
        self._wall: np.ndarray | None = None
        self._next = 0
        self._t0 = 0.0
        self._t0_wall = 0.0

    def open(self, live: bool = False) -> DepthInfo:
        w, h = self.size
        label = f"--depth {self.uri}"
        if w < 16 or h < 16 or w > 8192 or h > 8192:
            raise SourceError(f"{label}: size {w}x{h} is outside 16x16..8192x8192")
        if self.fps <= 0:
            raise SourceError(f"{label}: fps {self.fps:g} must be > 0")
        if self.frames < 0:
            raise SourceError(f"{label}: frames {self.frames} must be >= 0 (0 = endless)")
        if not 0 < self.near_mm < self.far_mm * 0.6 or self.far_mm > 65535:
            raise SourceError(
                f"{label}: near_mm {self.near_mm:g} and far_mm {self.far_mm:g} need 0 < near_mm < "
                "0.6 * far_mm <= 0.6 * 65535 (the box stands in front of the wall)"
            )
        if self.live is None:
            self.live = live
        rows = np.linspace(self.far_mm, 0.6 * self.far_mm, h, dtype=np.float32)
        self._wall = np.repeat(np.rint(rows).astype(np.uint16)[:, None], w, axis=1)
        self._next = 0
        self._t0 = 0.0
        return DepthInfo(uri=self.uri, width=w, height=h, fps=self.fps, live=self.live)

    def render(self, index: int) -> np.ndarray:
        """Depth (mm) of frame ``index``: deterministic, the box where the colour pattern's square is."""
        assert self._wall is not None, "open() first"
        w, h = self.size
        d = self._wall.copy()
        x, y, side = square_at(index, w, h)
        d[y : y + side, x : x + side] = round(self.near_mm)
        d[y : y + side, x + side : x + side + 2] = 0  # the box's shadow: no measurement
        return d

    def read(self) -> DepthFrame | None:
        if self._wall is None:
            raise SourceError(f"--depth {self.uri}: read() before open()")
        if self.live:
            now = time.monotonic()
            if not self._t0:
                self._t0, self._t0_wall = now, time.time()
            due = int((now - self._t0) * self.fps)  # the newest frame a camera would have sent by now
            if due < self._next:
                return None  # nothing new yet
            # a driver queue of about a second: a stalled reader gets what arrived meanwhile, in order
            self._next = max(self._next, due - max(1, round(self.fps)))
        if self.frames and self._next >= self.frames:
            return None
        k = self._next
        self._next += 1
        t = self._t0_wall + k / self.fps if self.live else k / self.fps
        return DepthFrame(self.render(k), k, t)

    def close(self) -> None:
        self._wall = None
