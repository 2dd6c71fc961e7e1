"""Image folder output: ``DIR/overlay/NNNNNN.png`` (colorized blend) and/or ``DIR/mask/NNNNNN.png``
(raw class ids, single channel, lossless), named by the frame's index in its source; with
``what=coco-rle`` / ``polygons`` also COCO-style JSON (stream/maskcodec): ``DIR/coco-rle/NNNNNN.json``
per frame, or with ``json=run`` one COCO dataset file ``DIR/coco-rle.json`` for the whole run."""

from __future__ import annotations

import os
from pathlib import Path

from stream.maskcodec.segments import DEFAULT_TOLERANCE, FORMATS
from stream.sinks.base import Result, Sink, SinkError, StreamInfo, check_writable_under

#: uncertainty maps, 8-bit grayscale PNGs (engines.calibration: entropy / ln C * 255, top-2 margin * 255)
MAPS = ("entropy", "margin", "confidence")
WHAT = ("overlay", "mask", "frame", *FORMATS, *MAPS)
JSON_MODES = ("frame", "run")


class ImageFolderSink(Sink):
    def __init__(
        self,
        folder: str,
        *,
        what: list[str] | tuple[str, ...] = ("overlay",),
        image_format: str = "png",
        spec: str | None = None,
        json_mode: str = "frame",
        tolerance: float = DEFAULT_TOLERANCE,
        components: bool = False,
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
        if json_mode not in JSON_MODES:
            raise SinkError(f"{self.spec}: json={json_mode!r} (expected frame or run)")
        if not 0 <= tolerance <= 100:
            raise SinkError(f"{self.spec}: tolerance={tolerance:g} (expected pixels, 0..100)")
        self.json_mode = json_mode
        self.tolerance = tolerance
        self.components = components
        self.wants_overlay = "overlay" in self.what
        self.wants_confidence = "confidence" in self.what
        self.wants_maps = tuple(w for w in self.what if w in ("entropy", "margin"))
        self.files_written = 0
        self._runs: dict = {}  # format -> coco.RunWriter (json=run)
        self.classes = None

    def preflight(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise SinkError(f"{self.spec}: {self.folder} is a file, not a folder")
        check_writable_under(self.spec, self.folder)

    def warm(self) -> None:
        from stream.maskcodec import segments

        for w in self.what:
            if w in FORMATS:
                segments.warm(w)

    def open(self, info: StreamInfo) -> None:
        from stream.maskcodec.coco import RunWriter

        self.classes = info.classes
        self.warm()
        for w in self.what:
            if w in FORMATS and self.json_mode == "run":
                self.folder.mkdir(parents=True, exist_ok=True)
                params = {"components": self.components}
                if w == "polygons":
                    params["tolerance"] = self.tolerance
                try:
                    self._runs[w] = RunWriter(self.folder / f"{w}.json", w, info.classes, params)
                except OSError as e:
                    raise SinkError(
                        f"{self.spec}: cannot write {self.folder / w}.json ({e.strerror})"
                    ) from None
                continue
            d = self.folder / w
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SinkError(f"{self.spec}: cannot create folder {d} ({e.strerror})") from None
            if not os.access(d, os.W_OK):
                raise SinkError(f"{self.spec}: folder {d} is not writable")

    def _save(self, kind: str, index: int, image) -> None:
        import cv2  # lazily: the supervisor imports this module for preflight() and needs no cv2

        # Masks and maps are always PNG: a lossy format would change class ids and values.
        ext = "png" if kind in ("mask", *MAPS) else self.image_format
        path = self.folder / kind / f"{index:06d}.{ext}"
        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error as e:
            raise SinkError(f"{self.spec}: cannot write {path} ({e})") from None
        if not ok:
            raise SinkError(f"{self.spec}: cannot write {path}")
        self.files_written += 1

    def _segments(self, kind: str, result: Result) -> None:
        from stream.maskcodec import coco, segments

        opts: dict = {"components": self.components}
        if kind == "polygons":
            opts["tolerance"] = self.tolerance
            ignore = None if self.classes is None else self.classes.ignore_index
            if ignore is not None:
                opts.update(fill=ignore, skip=(ignore,))
        doc = segments.encode(result.mask, kind, **opts)
        name = f"{result.frame_index:06d}"
        try:
            if kind in self._runs:
                self._runs[kind].add(doc, image_id=result.frame_index, file_name=name)
            else:
                path = self.folder / kind / f"{name}.json"
                coco.write_atomic(
                    path,
                    coco.frame_json(
                        doc, frame_index=result.frame_index, file_name=name, classes=self.classes
                    ),
                )
                self.files_written += 1
        except OSError as e:
            raise SinkError(f"{self.spec}: cannot write {kind} JSON ({e.strerror})") from None

    def write(self, result: Result) -> None:
        for kind in self.what:
            if kind in FORMATS:
                self._segments(kind, result)
                continue
            if kind == "overlay":
                image = result.overlay if result.overlay is not None else result.frame
            elif kind == "mask":
                image = result.mask
            elif kind in MAPS:
                image = result.confidence if kind == "confidence" else result.maps.get(kind)
                if image is None:
                    raise SinkError(f"{self.spec}: no {kind} map came with frame {result.frame_index}")
            else:
                image = result.frame
            self._save(kind, result.frame_index, image)

    def close(self) -> None:
        for writer in self._runs.values():
            if writer.close() is not None:
                self.files_written += 1
        self._runs.clear()
