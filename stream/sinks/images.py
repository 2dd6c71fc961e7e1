"""Image folder output: ``DIR/overlay/NNNNNN.png`` (colorized blend) and/or ``DIR/mask/NNNNNN.png``
(raw class ids, single channel, lossless), named by the frame's index in its source."""

from __future__ import annotations

import os
from pathlib import Path

from stream.sinks.base import Result, Sink, SinkError, StreamInfo, check_writable_under

WHAT = ("overlay", "mask", "frame")


class ImageFolderSink(Sink):
    def __init__(
        self,
        folder: str,
        *,
        what: list[str] | tuple[str, ...] = ("overlay",),
        image_format: str = "png",
        spec: str | None = None,
    ) -> None:
        self.spec = spec or f"images:{folder}"
        self.folder = Path(folder).expanduser()
        self.what = tuple(dict.fromkeys(what))
        if not folder:
            raise SinkError(f"{self.spec}: needs a folder (images:DIR)")
        bad = [w for w in self.what if w not in WHAT]
        if bad or not self.what:
            raise SinkError(f"{self.spec}: what={','.join(self.what)!s} must name some of {', '.join(WHAT)}")
        self.image_format = image_format.lower().lstrip(".")
        if self.image_format not in ("png", "jpg", "jpeg", "webp", "bmp"):
            raise SinkError(f"{self.spec}: format={image_format!r} is not png, jpg, webp or bmp")
        self.wants_overlay = "overlay" in self.what
        self.files_written = 0

    def preflight(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise SinkError(f"{self.spec}: {self.folder} is a file, not a folder")
        check_writable_under(self.spec, self.folder)

    def open(self, info: StreamInfo) -> None:
        for w in self.what:
            d = self.folder / w
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SinkError(f"{self.spec}: cannot create folder {d} ({e.strerror})") from None
            if not os.access(d, os.W_OK):
                raise SinkError(f"{self.spec}: folder {d} is not writable")

    def _save(self, kind: str, index: int, image) -> None:
        import cv2  # lazily: the supervisor imports this module for preflight() and needs no cv2

        # Masks are always PNG: a lossy format would change class ids.
        ext = "png" if kind == "mask" else self.image_format
        path = self.folder / kind / f"{index:06d}.{ext}"
        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error as e:
            raise SinkError(f"{self.spec}: cannot write {path} ({e})") from None
        if not ok:
            raise SinkError(f"{self.spec}: cannot write {path}")
        self.files_written += 1

    def write(self, result: Result) -> None:
        for kind in self.what:
            if kind == "overlay":
                image = result.overlay if result.overlay is not None else result.frame
            elif kind == "mask":
                image = result.mask
            else:
                image = result.frame
            self._save(kind, result.frame_index, image)

    def close(self) -> None:
        pass
