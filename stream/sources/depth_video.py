"""``--depth depth.mkv``: a depth video, 8- or 16-bit grey, decoded in order with PyAV.

Grey levels to millimetres (0 stays 0 = no measurement):

* 16-bit (``gray16le``, e.g. FFV1 or PNG in Matroska, lossless): level = mm by default; ``?scale_mm=S``
  multiplies by S, ``?max_mm=M`` maps 65535 to M;
* 8-bit (``gray``, or the luma of a colour video): needs ``?max_mm=M`` (255 = M mm) or ``?scale_mm=S``
  (S mm per level); a lossy codec (H.264, MPEG-4) moves levels by a few, so prefer a lossless one.

Timestamps are the frames' PTS in seconds (both videos of a recording on one clock); ``?offset_ms=``
shifts them when the depth video's clock is known to be off.
"""

from __future__ import annotations

import numpy as np

from stream.sources.base import SourceError
from stream.sources.depth import DepthFrame, DepthInfo, DepthSource


class DepthVideo(DepthSource):
    def __init__(
        self, path: str, scale_mm: float | None = None, max_mm: float | None = None, uri: str | None = None
    ) -> None:
        self.uri = uri or path
        self.path = path
        self.scale_mm = scale_mm
        self.max_mm = max_mm
        self.offset_s = 0.0
        self._container = None
        self._frames = None
        self._index = 0
        self._fps = 0.0
        self._wide = False  # 16-bit levels

    def open(self, live: bool = False) -> DepthInfo:
        from stream.sources.file import open_container, stream_fps

        label = f"--depth {self.uri}"
        self._container, stream = open_container(self.path, label)
        fmt = stream.codec_context.pix_fmt or ""
        self._wide = "16" in fmt
        if not self._wide and self.scale_mm is None and self.max_mm is None:
            self.close()
            raise SourceError(
                f"{label}: an 8-bit depth video ({fmt}) needs ?max_mm=M (grey 255 = M mm) or ?scale_mm=S "
                "(S mm per grey level)"
            )
        self._fps = stream_fps(stream)
        self._frames = self._container.decode(stream)
        self._index = 0
        return DepthInfo(
            uri=self.uri,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=self._fps,
            live=False,
        )

    def to_mm(self, levels: np.ndarray) -> np.ndarray:
        """Grey levels -> uint16 mm by the URI's scale (16-bit levels without one are mm already)."""
        if self.scale_mm is None and self.max_mm is None:
            return levels.astype(np.uint16)
        scale = self.scale_mm if self.scale_mm is not None else self.max_mm / (65535 if self._wide else 255)
        return np.clip(np.rint(levels.astype(np.float64) * scale), 0, 65535).astype(np.uint16)

    def read(self) -> DepthFrame | None:
        import av

        if self._frames is None:
            return None
        try:
            f = next(self._frames)
        except StopIteration:
            return None
        except av.error.FFmpegError as e:
            raise SourceError(f"--depth {self.uri}: decode error at frame {self._index} ({e})") from None
        levels = f.to_ndarray(format="gray16le" if self._wide else "gray")
        if f.pts is not None and f.time_base:
            t = float(f.pts * f.time_base)
        else:  # no PTS (raw streams): the nominal rate
            t = self._index / self._fps if self._fps else 0.0
        k = self._index
        self._index += 1
        return DepthFrame(self.to_mm(levels), k, t + self.offset_s)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None
