"""A moving test pattern: scrolling colour bars, a bouncing square and the frame number.

Paced at its fps by default (a live source: when the reader falls more than one frame period behind,
the frames it missed are skipped and counted in ``stats.dropped``); ``live=False`` returns frames as fast
as they are asked for and never drops. ``pace_change=(N, FPS)`` paces frames from index N on at FPS
instead (a camera that slows down or speeds up: e.g. to show `--adaptive` stepping back up).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from stream.sources.base import Frame, ReadStatus, Source, SourceError, SourceInfo, SourceStats


def square_at(index: int, w: int, h: int) -> tuple[int, int, int]:
    """(x, y, side) of the bouncing square in frame ``index`` (the synthetic depth source's box too)."""
    side = max(8, min(w, h) // 6)
    period_x, period_y = 2 * (w - side), 2 * (h - side)
    x = (index * 7) % period_x
    y = (index * 5) % period_y
    x = x if x < w - side else period_x - x
    y = y if y < h - side else period_y - y
    return x, y, side


class SyntheticSource(Source):
    def __init__(
        self,
        size: tuple[int, int] = (640, 480),
        fps: float = 30.0,
        frames: int = 0,
        live: bool = True,
        seed: int = 0,
        uri: str | None = None,
        pace_change: tuple[int, float] | None = None,
    ) -> None:
        self.size = size
        self.fps = fps
        self.pace_change = pace_change
        self.frames = frames  # 0 = endless
        self.live = live
        self.seed = seed
        self.uri = uri or f"synthetic://?size={size[0]}x{size[1]}&fps={fps:g}&frames={frames}"
        self.stats = SourceStats()
        self._next = 0
        self._t0 = 0.0
        self._background: np.ndarray | None = None

    def open(self) -> SourceInfo:
        w, h = self.size
        if w < 16 or h < 16 or w > 8192 or h > 8192:
            raise SourceError(f"{self.uri}: size {w}x{h} is outside 16x16..8192x8192")
        if self.fps <= 0:
            raise SourceError(f"{self.uri}: fps must be > 0")
        if self.frames < 0:
            raise SourceError(f"{self.uri}: frames must be >= 0 (0 = endless)")
        if self.pace_change is not None and (self.pace_change[0] < 0 or self.pace_change[1] <= 0):
            raise SourceError(f"{self.uri}: pace change needs a frame index >= 0 and an fps > 0")
        # Bars twice as wide as the frame, so that scrolling is one slice of a precomputed image.
        rng = np.random.default_rng(self.seed)
        colours = rng.integers(40, 256, size=(8, 3), dtype=np.uint8)
        bar = np.repeat(colours, max(1, w // 8), axis=0)
        row = np.resize(bar, (2 * w, 3))  # np.resize repeats the bars cyclically
        shade = np.linspace(0.55, 1.0, h, dtype=np.float32)[:, None, None]
        self._background = (row[None, :, :].astype(np.float32) * shade).astype(np.uint8)
        self._t0 = 0.0  # the clock starts at the first read, so slow set-up downstream is no drop
        self._next = 0
        # the first render sets up OpenCV's text drawing (18 ms at 480x360): done here, or frame 0 comes
        # out late on its own clock and frame 1, already due, right behind it (a burst the pipeline queues)
        self.render(0)
        return SourceInfo(
            uri=self.uri, width=w, height=h, fps=self.fps, live=self.live, total_frames=self.frames or None
        )

    def render(self, index: int) -> np.ndarray:
        """The pattern for frame ``index`` (deterministic: the same index gives the same image)."""
        assert self._background is not None, "open() first"
        w, h = self.size
        shift = (index * 4) % w
        img = np.ascontiguousarray(self._background[:, shift : shift + w])
        x, y, side = square_at(index, w, h)
        cv2.rectangle(img, (x, y), (x + side - 1, y + side - 1), (255, 255, 255), thickness=-1)
        scale = max(0.4, h / 480)
        cv2.putText(img, f"{index:06d}", (8, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2)
        return img

    def read(self, timeout: float = 1.0) -> Frame:
        if self._background is None:
            raise SourceError(f"{self.uri}: read() before open()")
        if self.frames and self._next >= self.frames:
            return Frame(ReadStatus.EOS, index=self._next, timestamp=time.time())
        if self.live:
            now = time.monotonic()
            if not self._t0:
                self._t0 = now
            due = self._t0 + self._offset(self._next)
            if due > now:
                if due - now > timeout:
                    time.sleep(max(0.0, timeout))
                    return Frame(ReadStatus.TIMEOUT, index=self._next, timestamp=time.time())
                time.sleep(due - now)
            else:
                # Newest frame wins: frames whose time has fully passed were never taken -> dropped.
                latest = self._latest(now - self._t0)
                if self.frames:
                    latest = min(latest, self.frames - 1)
                if latest > self._next:
                    self.stats.dropped += latest - self._next
                    self._next = latest
        index = self._next
        self._next += 1
        self.stats.frames += 1
        return Frame(ReadStatus.OK, image=self.render(index), index=index, timestamp=time.time())

    def _offset(self, index: int) -> float:
        """Seconds after the first read at which frame ``index`` is due."""
        if self.pace_change is None or index <= self.pace_change[0]:
            return index / self.fps
        n, fps2 = self.pace_change
        return n / self.fps + (index - n) / fps2

    def _latest(self, elapsed: float) -> int:
        """The newest frame due ``elapsed`` seconds after the first read."""
        if self.pace_change is None or elapsed <= self.pace_change[0] / self.fps:
            return int(elapsed * self.fps)
        n, fps2 = self.pace_change
        return n + int((elapsed - n / self.fps) * fps2)

    def close(self) -> None:
        self._background = None
