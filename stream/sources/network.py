"""Network streams (rtsp, http(s), tcp, udp, srt, rtmp — anything FFmpeg opens) through PyAV.

``open()`` connects once (bounded by ``open_timeout``). An http(s) URL whose server says it is a file — it
announces the size (Content-Length) and the container a finite duration — is read like a file
(stream.sources.file): every frame in order, nothing dropped, EOS at its end, and a lost connection is an
error rather than an early end. ``live=1`` / ``live=0`` in the URI decide instead of the server.

Anything else is a live stream: ``open()`` decodes the first frame, so an unreachable or non-video stream
is a clear SourceError at once, then a background thread reads the stream into a newest-frame-wins slot
(stream.sources.live). When the stream drops (error, read timeout, end of data) the thread reconnects with
exponential backoff (``backoff_min`` doubling to ``backoff_max``). Every drop, failed attempt and
reconnection is a line for the user (``take_notices``; the capture stage forwards them to the terminal);
successful reconnects count in ``stats.reconnects``, failed attempts in ``stats.extra["reconnect_failures"]``.
After the first attempt, ``reconnect`` more are made (-1 = never give up); then reads return EOS whose
error gives the reason, and the run fails with it.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterator

import av
import numpy as np

from stream.sources.base import Frame, SourceError, SourceInfo, SourceStats
from stream.sources.file import FileSource, stream_fps
from stream.sources.live import LiveReader, LiveSource

log = logging.getLogger(__name__)

DEFAULT_RECONNECT = (
    10  # retries after the first failed attempt: about 45 s of outage with the default backoff
)


def _reason(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg).strip()


def redact(url: str) -> str:
    """The URL with any password replaced, for messages shown on a terminal or kept in logs."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", url)


class NetworkSource(LiveSource):
    def __init__(
        self,
        url: str,
        *,
        reconnect: int = DEFAULT_RECONNECT,
        read_timeout: float = 5.0,
        open_timeout: float = 10.0,
        backoff_min: float = 0.5,
        backoff_max: float = 5.0,
        live: bool | None = None,
        uri: str | None = None,
    ) -> None:
        self.url = url
        self.reconnect = reconnect
        self.read_timeout = read_timeout
        self.open_timeout = open_timeout
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        http = url.lower().startswith(("http://", "https://"))
        # None: decided at open (an http(s) URL may be a file); other protocols are live unless told
        self.live = live if live is not None or http else True
        self.uri = uri or url
        self.label = redact(url)  # what messages show: the URL FFmpeg opens, password hidden
        self.stats = SourceStats(extra={"reconnect_failures": 0})
        self._reader: LiveReader | None = None
        self._file: FileSource | None = None
        self._notices: deque[str] = deque()

    def _ffmpeg_options(self) -> dict[str, str]:
        opts = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "1000000"}
        if self.url.lower().startswith(("rtsp://", "rtsps://")):
            opts["rtsp_transport"] = "tcp"  # UDP RTP loses packets -> smeared frames
        return opts

    def _open_container(self) -> av.container.InputContainer:
        try:
            return av.open(
                self.url, options=self._ffmpeg_options(), timeout=(self.open_timeout, self.read_timeout)
            )
        except (av.error.FFmpegError, OSError) as e:
            raise SourceError(f"{self.label}: cannot open stream ({_reason(e)})") from None

    def _is_file(self, container: av.container.InputContainer) -> bool:
        """What the server says: a known size and a finite duration make a file (http(s) only: other
        protocols have no notion of a size)."""
        if self.live is not None:
            return not self.live
        size = getattr(container, "size", -1)  # avio_size: Content-Length, negative when not announced
        return isinstance(size, int) and size > 0 and bool(container.duration) and container.duration > 0

    def _connect(
        self, container: av.container.InputContainer | None = None
    ) -> tuple[av.container.InputContainer, Iterator[np.ndarray], np.ndarray]:
        """Open the stream (unless given) and decode its first frame; SourceError with the reason."""
        container = container or self._open_container()
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.label}: stream has no video")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threads would hold back (threads - 1) frames of latency
        self._fps = stream_fps(stream)
        frames = self._decode(container, stream)
        try:
            first = next(frames, None)
        except (av.error.FFmpegError, OSError) as e:
            container.close()
            raise SourceError(f"{self.label}: no frame received ({_reason(e)})") from None
        if first is not None:
            return container, frames, first
        container.close()
        raise SourceError(f"{self.label}: stream ended before its first frame")

    def _decode(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> Iterator:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                self.stats.decode_errors += 1
                continue
            for f in decoded:
                yield f.to_ndarray(format="bgr24")

    def open(self) -> SourceInfo:
        self._fps = 0.0
        container = self._open_container()
        if self._is_file(container):
            if not container.streams.video:
                container.close()
                raise SourceError(f"{self.label}: contains no video stream")
            self._file = FileSource.from_container(container, container.streams.video[0], self.label)
            self._file.stats = self.stats  # one set of counters, whichever way the URL is read
            self.live = False
            return self._file.info
        self.live = True
        container, frames, first = self._connect(container)
        h, w = first.shape[:2]
        self._reader = LiveReader(self.label, self.stats)
        self._reader.start(lambda reader: self._loop(reader, container, frames, first))
        return SourceInfo(uri=self.uri, width=w, height=h, fps=self._fps, live=True)

    def read(self, timeout: float = 1.0) -> Frame:
        if self._file is not None:
            return self._file.read(timeout)
        return super().read(timeout)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()

    def take_notices(self) -> list[str]:
        out = self._file.take_notices() if self._file is not None else []
        while self._notices:
            out.append(self._notices.popleft())
        return out

    def _notice(self, line: str) -> None:
        log.warning("%s", line)  # the stage log keeps them too
        self._notices.append(line)

    def _loop(
        self,
        reader: LiveReader,
        container: av.container.InputContainer | None,
        frames: Iterator[np.ndarray] | None,
        first: np.ndarray | None,
    ) -> str | None:
        failures = 0
        backoff = self.backoff_min
        last_error = ""
        while not reader.stopping:
            if container is None:
                try:
                    container, frames, first = self._connect()
                except SourceError as e:
                    failures += 1
                    self.stats.extra["reconnect_failures"] += 1
                    last_error = str(e).removeprefix(f"{self.label}: ")
                    left = self.reconnect - failures + 1  # retries still allowed (budget >= 0)
                    if self.reconnect >= 0 and left <= 0:
                        self._notice(f"{self.label}: reconnect attempt {failures} failed ({last_error})")
                        return (
                            f"{self.label}: gave up after {failures} failed reconnect attempts ({last_error})"
                        )
                    more = f", {left} left" if self.reconnect >= 0 else ""
                    self._notice(
                        f"{self.label}: reconnect attempt {failures} failed ({last_error}); "
                        f"next in {backoff:.1f} s{more}"
                    )
                    reader.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                self.stats.reconnects += 1
                after = f" after {failures} failed attempt{'s' if failures != 1 else ''}" if failures else ""
                self._notice(f"{self.label}: reconnected{after}")
                failures = 0
                backoff = self.backoff_min
            try:
                if first is not None:
                    reader.publish(first)
                    first = None
                for image in frames or ():
                    if reader.stopping:
                        break
                    reader.publish(image)
                last_error = "stream ended"
            except (av.error.FFmpegError, OSError) as e:
                last_error = _reason(e)
            finally:
                container.close()
                container, frames = None, None
            if not reader.stopping:
                self._notice(f"{self.label}: stream lost ({last_error}); reconnecting")
        return None

    def join_timeout(self) -> float:
        return self.read_timeout + 1.0  # a blocked read ends within read_timeout
