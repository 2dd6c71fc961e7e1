"""A folder of images or a glob pattern, read in sorted (natural) order as a file-like source: never drops.

An unreadable image is one ERROR read (counted); images of different sizes pass through as they are.
"""

from __future__ import annotations

import glob
import re
import time
from pathlib import Path

from stream.sources.base import Frame, ReadStatus, Source, SourceError, SourceInfo, SourceStats

IMAGE_SUFFIXES = frozenset([".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"])


def _natural_key(path: str) -> list[object]:
    """frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path)]


def list_images(pattern: str) -> list[str]:
    """Image files of a folder, a glob pattern (``**`` recursive) or a single image, naturally sorted."""
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = [str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    elif p.is_file():
        files = [str(p)]
    else:
        files = [f for f in glob.glob(str(p), recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


class ImageSource(Source):
    def __init__(self, pattern: str, *, fps: float = 0.0, loop: bool = False, uri: str | None = None) -> None:
        self.pattern = pattern
        self.fps = fps
        self.loop = loop
        self.uri = uri or pattern
        self.stats = SourceStats()
        self.files: list[str] = []
        self._pos = 0
        self._index = 0

    def open(self) -> SourceInfo:
        p = Path(self.pattern).expanduser()
        if not re.search(r"[*?\[]", self.pattern) and not p.exists():
            raise SourceError(f"{self.uri}: no such file or folder")
        self.files = list_images(self.pattern)
        if not self.files:
            raise SourceError(f"{self.uri}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
        import cv2  # here, not at the top: the supervisor imports this module only to classify a source

        first = cv2.imread(self.files[0], cv2.IMREAD_COLOR)
        if first is None:
            raise SourceError(f"{self.uri}: cannot read image {self.files[0]}")
        h, w = first.shape[:2]
        self._pos = 0
        return SourceInfo(
            uri=self.uri,
            width=w,
            height=h,
            fps=self.fps,
            live=False,
            total_frames=None if self.loop else len(self.files),
        )

    def read(self, timeout: float = 1.0) -> Frame:
        if not self.files:
            raise SourceError(f"{self.uri}: read() before open()")
        if self._pos >= len(self.files):
            if not self.loop:
                return Frame(ReadStatus.EOS, index=self._index, timestamp=time.time())
            self._pos = 0
        path = self.files[self._pos]
        self._pos += 1
        import cv2

        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            self.stats.decode_errors += 1
            return Frame(
                ReadStatus.ERROR, index=self._index, timestamp=time.time(), error=f"cannot read {path}"
            )
        frame = Frame(ReadStatus.OK, image=image, index=self._index, timestamp=time.time())
        self._index += 1
        self.stats.frames += 1
        return frame

    def close(self) -> None:
        self.files = []
