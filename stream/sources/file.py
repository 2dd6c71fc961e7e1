"""Video files through PyAV (FFmpeg).

Why PyAV rather than cv2.VideoCapture: measured on solidWhiteRight.mp4 with 2x3000 random bytes written
into the middle, cv2 silently stopped after 65 of 220 decodable frames, while PyAV raised one
InvalidDataError for the damaged packet and went on to decode 220. PyAV also gives exact frame counts
and per-frame timestamps. OpenCV decodes faster (≈ 540 vs ≈ 430 fps for 960x540 here), but either is far
above what inference sustains on this machine.

File sources never drop: every decodable frame is returned, in order; a decode error is returned as one
ERROR frame (and counted) and the next read goes on; the end of the data (also of a truncated file) is EOS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from stream.sources.base import Frame, ReadStatus, Source, SourceError, SourceInfo, SourceStats

# After this many consecutive demux failures the rest of the file is taken as unreadable (EOS).
_MAX_CONSECUTIVE_DEMUX_ERRORS = 50


def open_container(path: str, uri: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` with PyAV and return (container, first video stream); SourceError when it is no video."""
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise SourceError(f"{uri}: not a readable video ({_ffmpeg_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{uri}: contains no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: files need throughput, not per-frame latency
    if not stream.codec_context.width or not stream.codec_context.height:
        container.close()
        raise SourceError(f"{uri}: video stream has no frame size (corrupt header?)")
    return container, stream


def _ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).split(":")[0].strip() or type(e).__name__


def stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


class FileSource(Source):
    """A video file, decoded in order; ``loop=True`` starts again at the end (for demos and soak runs)."""

    def __init__(self, path: str, *, loop: bool = False, uri: str | None = None) -> None:
        self.path = path
        self.loop = loop
        self.uri = uri or path
        self.stats = SourceStats()
        self.info: SourceInfo | None = None
        self.last_pts: float | None = None  # presentation time (s) of the last OK frame
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[tuple[np.ndarray | None, float | None, str | None]] | None = None
        self._index = 0

    def open(self) -> SourceInfo:
        p = Path(self.path)
        if not p.exists():
            raise SourceError(f"{self.uri}: file not found")
        if p.is_dir():
            raise SourceError(f"{self.uri}: is a directory (use images:DIR for a folder of images)")
        container, stream = open_container(str(p), self.uri)
        self._container = container
        self._frames = self._decode(container, stream)
        self.info = SourceInfo(
            uri=self.uri,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=stream_fps(stream),
            live=False,
            total_frames=(stream.frames or None) if not self.loop else None,
        )
        return self.info

    def _decode(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> Iterator[tuple[np.ndarray | None, float | None, str | None]]:
        """Yield (image, pts, None) per frame and (None, None, message) per decode error."""
        packets = container.demux(stream)
        failures = 0
        while True:
            try:
                packet = next(packets)
            except (StopIteration, av.error.EOFError):
                break
            except av.error.FFmpegError as e:
                failures += 1
                yield None, None, f"demux error: {_ffmpeg_reason(e)}"
                if failures >= _MAX_CONSECUTIVE_DEMUX_ERRORS:
                    break
                packets = container.demux(stream)  # the generator died with the exception
                continue
            failures = 0
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                yield None, None, f"decode error at packet pts={packet.pts}: {_ffmpeg_reason(e)}"
                continue
            for f in frames:
                pts = float(f.pts * f.time_base) if f.pts is not None and f.time_base else None
                yield f.to_ndarray(format="bgr24"), pts, None

    def read(self, timeout: float = 1.0) -> Frame:
        if self._frames is None or self._container is None:
            raise SourceError(f"{self.uri}: read() before open()")
        item = next(self._frames, None)
        if item is None and self.loop and self.stats.frames > 0:
            self._container.close()
            self._container, stream = open_container(self.path, self.uri)
            self._frames = self._decode(self._container, stream)
            item = next(self._frames, None)
        if item is None:
            return Frame(ReadStatus.EOS, index=self._index, timestamp=time.time())
        image, pts, error = item
        if error is not None:
            self.stats.decode_errors += 1
            return Frame(ReadStatus.ERROR, index=self._index, timestamp=time.time(), error=error)
        frame = Frame(ReadStatus.OK, image=image, index=self._index, timestamp=time.time())
        self._index += 1
        self.stats.frames += 1
        self.last_pts = pts
        return frame

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._frames = None
