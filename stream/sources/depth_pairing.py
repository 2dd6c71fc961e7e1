"""Pairing depth frames with colour frames: ``--depth-pairing index|timestamp``.

* ``index``: colour frame k gets depth frame k (the k-th PNG in name order, the k-th video frame).
* ``timestamp``: colour frame at time t gets the depth frame nearest to t if it is within
  ``--depth-tolerance-ms``; otherwise none. Recorded sources are compared on their own timelines (a
  video's PTS; an image folder's index / fps; a depth folder's file names in ms or index / ``?fps=``),
  live ones by arrival time (both must then be live; a live colour frame waits at most the tolerance for
  a depth frame that has not arrived yet). A depth source slower than the colour may give one
  depth frame to more than one colour frame, each within the tolerance.

A colour frame without its depth frame is not fed to the model: capture counts it as unpaired
(``drops.unpaired_depth``; ``capture.extra.depth_paired`` counts the others).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from stream.sources.base import SourceError
from stream.sources.depth import PAIRINGS, DepthFrame, DepthInfo, DepthSource


class DepthPairer:
    def __init__(self, source: DepthSource, pairing: str = "index", tolerance_ms: float = 20.0) -> None:
        if pairing not in PAIRINGS:
            raise SourceError(f"--depth-pairing {pairing}: expected one of {', '.join(PAIRINGS)}")
        self.source = source
        self.pairing = pairing
        self.tolerance = tolerance_ms / 1000.0
        self.paired = 0
        self.unpaired = 0
        self._pending: DepthFrame | None = None  # index pairing: the next depth frame, read ahead
        self._window: deque[DepthFrame] = deque()  # timestamp pairing: candidates, oldest first
        self._ended = False
        self.info: DepthInfo | None = None

    def open(self, colour_live: bool, colour_timed: bool = True) -> DepthInfo:
        """Open the depth source; for timestamp pairing, check both sides have comparable times."""
        self.info = self.source.open(colour_live)
        if self.pairing == "timestamp":
            uri = self.source.uri
            if not self.info.timed:
                raise SourceError(
                    f"--depth {uri}: its frames have no timestamps for --depth-pairing timestamp (name the "
                    "files by their time in ms, e.g. 000123456.png, or give ?fps=N)"
                )
            if self.info.live != colour_live:
                which = (
                    "the colour source is live and the depth source is recorded"
                    if colour_live
                    else "the depth source is live and the colour source is recorded"
                )
                raise SourceError(
                    f"--depth {uri}: --depth-pairing timestamp compares arrival times of live sources and "
                    f"timelines of recorded ones, but {which}; use --depth-pairing index"
                )
            if not colour_timed:
                raise SourceError(
                    "--depth-pairing timestamp: the colour source has no frame times (no PTS, no frame "
                    "rate); give the colour source a rate (images:DIR?fps=N) or use --depth-pairing index"
                )
        return self.info

    def pair(self, index: int, t: float) -> np.ndarray | None:
        """The depth image (uint16 mm) for colour frame ``index`` at time ``t`` (s), or None (counted)."""
        d = self._by_index(index) if self.pairing == "index" else self._by_time(t)
        if d is None:
            self.unpaired += 1
            return None
        self.paired += 1
        return d.depth

    def _read(self) -> DepthFrame | None:
        if self._ended:
            return None
        f = self.source.read()
        if f is None and not (self.info is not None and self.info.live):
            self._ended = True  # a recorded source has nothing more; a live one, nothing new yet
        return f

    def _by_index(self, index: int) -> DepthFrame | None:
        if self._pending is None or self._pending.index < index:
            skip = getattr(self.source, "skip_to", None)
            if skip is not None:  # a folder seeks instead of decoding frames it would drop
                skip(index)
            self._pending = self._read()
            while self._pending is not None and self._pending.index < index:
                self._pending = self._read()
        if self._pending is not None and self._pending.index == index:
            f, self._pending = self._pending, None
            return f
        return None

    def _by_time(self, t: float) -> DepthFrame | None:
        best = self._nearest(t)
        if self.info is not None and self.info.live:
            import time

            # live: the depth frame nearest to this colour frame may arrive just after it; wait for it,
            # never longer than the tolerance (a camera pair a few ms apart is the normal case)
            while (best is None or abs(best.t - t) > self.tolerance) and time.time() < t + self.tolerance:
                time.sleep(0.002)
                best = self._nearest(t)
        if best is None or abs(best.t - t) > self.tolerance:
            return None
        return best

    def _nearest(self, t: float) -> DepthFrame | None:
        # read until a frame lies beyond the window (later colour frames may want it) or none is left
        while not self._window or self._window[-1].t <= t + self.tolerance:
            f = self._read()
            if f is None:
                break
            self._window.append(f)
        # colour times only grow: a frame older than the window pairs with nothing any more
        while self._window and self._window[0].t < t - self.tolerance:
            self._window.popleft()
        return min(self._window, key=lambda f: abs(f.t - t), default=None)

    def close(self) -> None:
        self.source.close()
