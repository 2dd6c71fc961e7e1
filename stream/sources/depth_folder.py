"""``--depth DIR``: a folder of 16-bit PNG depth images in millimetres (0 = no measurement), in name order.

Timestamps (for ``--depth-pairing timestamp``): when every file name is a number (``000123456.png``) it is
the frame's time in milliseconds, on the colour source's timeline (a video's PTS, an image folder's
index / fps); otherwise ``?fps=N`` stamps the k-th file k / N seconds. ``?offset_ms=`` shifts them all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream.sources.base import SourceError
from stream.sources.depth import DepthFrame, DepthInfo, DepthSource, depth_folder


class DepthFolder(DepthSource):
    """Depth images of a folder in name order; ``read()`` is the next one (None past the end)."""

    def __init__(self, path: str, fps: float = 0.0, uri: str | None = None) -> None:
        self.uri = uri or path
        self.path = path
        self.fps = fps
        self.offset_s = 0.0
        self.files: list[Path] = []
        self.stamps_ms: list[int] | None = None
        self._next = 0

    def open(self, live: bool = False) -> DepthInfo:
        self.files = sorted(p for p in depth_folder(self.path).iterdir() if p.suffix.lower() == ".png")
        if not self.files:
            raise SourceError(f"--depth {self.uri}: no .png files in the folder")
        stems = [p.stem for p in self.files]
        # names that are all numbers are timestamps in ms; sorted by value, not by name (no zero padding)
        if all(s.isdigit() for s in stems):
            pairs = sorted(zip((int(s) for s in stems), self.files, strict=True))
            self.stamps_ms = [t for t, _ in pairs]
            self.files = [p for _, p in pairs]
        first = self._load(0)
        self._next = 0
        return DepthInfo(
            uri=self.uri,
            width=first.shape[1],
            height=first.shape[0],
            fps=self.fps,
            live=False,
            timed=self.stamps_ms is not None or self.fps > 0,
        )

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, k: int) -> np.ndarray:
        """The k-th file as (H, W) uint16 mm; a file that is not a 16-bit grey PNG is a SourceError."""
        from engines.data import DatasetError
        from engines.depth import read_depth

        try:
            return read_depth(self.files[k])
        except DatasetError as e:
            raise SourceError(f"--depth: {e}") from None

    def time_of(self, k: int) -> float:
        if self.stamps_ms is not None:
            return self.stamps_ms[k] / 1000.0 + self.offset_s
        return (k / self.fps if self.fps > 0 else 0.0) + self.offset_s

    def read(self) -> DepthFrame | None:
        if self._next >= len(self.files):
            return None
        k = self._next
        self._next += 1
        return DepthFrame(self._load(k), k, self.time_of(k))

    def skip_to(self, index: int) -> None:
        """Index pairing skips what it will never pair without decoding it (a folder seeks for free)."""
        self._next = max(self._next, index)

    def close(self) -> None:
        self.files = []
