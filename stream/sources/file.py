"""Video files through PyAV (FFmpeg).

Why PyAV rather than cv2.VideoCapture: measured on solidWhiteRight.mp4 with 2x3000 random bytes written
into the middle, cv2 silently stopped after 65 of 220 decodable frames, while PyAV raised one
InvalidDataError for the damaged packet and went on to decode 220. PyAV also gives exact frame counts
and per-frame timestamps. OpenCV decodes faster (≈ 540 vs ≈ 430 fps for 960x540 here), but either is far
above what inference sustains on this machine.

File sources never drop: every decodable frame is returned, in order; a decode error is returned as one
ERROR frame (and counted) and the next read goes on; the end of the data (also of a truncated file) is EOS.
A file that cannot be opened says why in plain words: empty, truncated (an MP4/MOV whose box structure
breaks off, e.g. inside its 'moov' index), or not a readable video.

``FileSource.from_container`` reads a network URL whose server says it is a file (stream.sources.network)
the same way; there a lost connection ends the read with EOS carrying the reason, never a silent end.
"""

from __future__ import annotations

import os
import struct
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from stream.sources.base import Frame, ReadStatus, Source, SourceError, SourceInfo, SourceStats

# After this many consecutive demux failures the rest of the file is taken as unreadable (EOS).
_MAX_CONSECUTIVE_DEMUX_ERRORS = 50

# Top-level ISO BMFF (MP4/MOV/3GP) boxes, and the ones a file may start with.
_BMFF_BOXES = frozenset(
    [b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"moof", b"mfra", b"sidx"]
    + [b"pdin", b"meta", b"meco", b"prft", b"emsg", b"ssix", b"pnot", b"junk"]
)
_BMFF_FIRST = frozenset([b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"])
_BOX_ROLE = {
    b"moov": " (the index of every frame)",
    b"mdat": " (the frame data)",
    b"ftyp": " (the file type)",
}


def use_decoder_threads(stream: av.video.stream.VideoStream) -> None:
    """Decoder threads for a file read for throughput. On small machines one thread: capture is one
    process of several sharing the cores, and frame threads there cost CPU (measured on 2 cores, 960x540
    H.264: -15% CPU single-threaded, and no slower); FFmpeg's frame + slice threads where cores are spare."""
    from stream import cpus

    if cpus.usable_cores() <= 4:
        stream.thread_type = "SLICE"
        stream.thread_count = 1
    else:
        stream.thread_type = "AUTO"


def mp4_damage(path: str) -> str | None:
    """Where an MP4/MOV file's top-level box structure breaks off, in words; None when it is whole or not
    an MP4 at all. Reads box headers only (a few bytes per box), so it costs nothing on big files."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            off, seen = 0, []
            while off < size:
                f.seek(off)
                head = f.read(16)
                if len(head) < 8:
                    return (
                        f"the file is truncated: it ends inside a box header at byte {off}" if seen else None
                    )
                n, kind = struct.unpack(">I4s", head[:8])
                if n == 1 and len(head) == 16:
                    n = struct.unpack(">Q", head[8:16])[0]
                elif n == 0:  # "to the end of the file"
                    n = size - off
                if kind not in (_BMFF_BOXES if seen else _BMFF_FIRST) or n < 8:
                    return f"the file is damaged: no valid box at byte {off}" if seen else None
                seen.append(kind)
                if off + n > size:
                    name = kind.decode("latin-1")
                    return (
                        f"the file is truncated: its '{name}' box{_BOX_ROLE.get(kind, '')} needs {n} bytes "
                        f"from byte {off}, but the file ends at byte {size}"
                    )
                off += n
    except OSError:
        return None
    if b"moov" not in seen and b"moof" not in seen:
        return "the file has no 'moov' box (the index of every frame): truncated, or never finalized"
    if b"mdat" not in seen:
        return "the file is truncated: it has no 'mdat' box (the frame data)"
    return None


def _unreadable(path: str, e: Exception | None) -> str:
    """Why a local file did not open as a video, in the words a user needs."""
    try:
        if os.path.getsize(path) == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        pass
    damage = mp4_damage(path)
    if damage:
        return damage
    if e is None:  # opened, but FFmpeg found no stream at all
        return "no audio or video stream found: the file is truncated or not a video"
    return f"not a readable video ({_ffmpeg_reason(e)})"


def open_container(
    path: str,
    uri: str,
    options: dict[str, str] | None = None,
    timeout: tuple[float, float] | None = None,
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` (a file, or a URL with FFmpeg ``options``/``timeout``) with PyAV and return
    (container, first video stream); SourceError saying why when it is no readable video."""
    local = "://" not in path
    try:
        container = av.open(path, mode="r", options=options or {}, timeout=timeout)
    except av.error.FFmpegError as e:
        why = _unreadable(path, e) if local else f"not a readable video ({_ffmpeg_reason(e)})"
        raise SourceError(f"{uri}: {why}") from None
    if not container.streams.video:
        n = len(container.streams)
        container.close()
        if local and (n == 0 or mp4_damage(path)):
            raise SourceError(f"{uri}: {_unreadable(path, None)}")
        raise SourceError(f"{uri}: contains no video stream" + (" (audio or data only)" if n else ""))
    stream = container.streams.video[0]
    use_decoder_threads(stream)
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


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as BGR24. 4:2:0 frames (nearly every camera and file) go through OpenCV's I420
    converter: same BT.601 limited-range matrix as libswscale's default, within 3 levels of it, and about
    0.45 ms less CPU per 960x540 frame (see docs/performance.md)."""
    if frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
        import cv2  # lazily: the supervisor probes sources with this module and needs no cv2

        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
    return frame.to_ndarray(format="bgr24")


class FileSource(Source):
    """A video file, decoded in order; ``loop=True`` starts again at the end (for demos and soak runs)."""

    def __init__(self, path: str, *, loop: bool = False, uri: str | None = None) -> None:
        self.path = path
        self.loop = loop
        self.uri = uri or path
        self.stats = SourceStats()
        self.info: SourceInfo | None = None
        self.last_pts: float | None = None  # presentation time (s) of the last OK frame
        self.remote = False  # a URL read as a file: a lost connection is an error, not the end
        self.damage: str | None = None  # how the file is truncated, when it opened anyway
        self._failure: str | None = None  # why reading stopped early (EOS carries it)
        self._notices: deque[str] = deque()
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[tuple[np.ndarray | None, float | None, str | None]] | None = None
        self._index = 0

    @classmethod
    def from_container(
        cls, container: av.container.InputContainer, stream: av.video.stream.VideoStream, uri: str
    ) -> FileSource:
        """Read an opened network container like a file: every frame in order, EOS at its end."""
        src = cls(uri, uri=uri)
        src.remote = True
        use_decoder_threads(stream)
        if not stream.codec_context.width or not stream.codec_context.height:
            container.close()
            raise SourceError(f"{uri}: video stream has no frame size (corrupt header?)")
        src._start(container, stream)
        return src

    def open(self) -> SourceInfo:
        p = Path(self.path)
        if not p.exists():
            raise SourceError(f"{self.uri}: file not found")
        if p.is_dir():
            raise SourceError(f"{self.uri}: is a directory (use images:DIR for a folder of images)")
        container, stream = open_container(str(p), self.uri)
        self.damage = mp4_damage(str(p))
        if self.damage:
            self._notices.append(f"{self.uri}: {self.damage}; reading the frames that are there")
        return self._start(container, stream)

    def _start(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> SourceInfo:
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

    def take_notices(self) -> list[str]:
        out = list(self._notices)
        self._notices.clear()
        return out

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
                if self.remote and isinstance(e, OSError):  # connection reset, I/O error, timeout
                    self._failure = f"connection lost after {self._index} frames ({_ffmpeg_reason(e)})"
                    break
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
                yield to_bgr(f), pts, None

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
            error = f"{self.uri}: {self._failure}" if self._failure else None
            if error is None and self.damage and self.stats.frames == 0:
                error = f"{self.uri}: no frame could be decoded: {self.damage}"
            return Frame(ReadStatus.EOS, index=self._index, timestamp=time.time(), error=error)
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
