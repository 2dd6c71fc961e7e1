"""Network streams (rtsp, http(s), tcp, udp, srt, rtmp — anything FFmpeg opens) through PyAV.

``open()`` connects once (bounded by ``open_timeout``) and decodes the first frame, so an unreachable or
non-video stream is a clear SourceError at once. Then a background thread reads the stream into a
newest-frame-wins slot (stream.sources.live). When the stream drops (error, read timeout, end of data)
the thread reconnects with exponential backoff (``backoff_min`` doubling to ``backoff_max``), counts
every successful reconnect in ``stats.reconnects`` and every failed attempt in
``stats.extra["reconnect_failures"]``, and gives up only after ``reconnect`` consecutive failed attempts
(-1 = never); reads then return EOS with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import av
import numpy as np

from stream.sources.base import SourceError, SourceInfo, SourceStats
from stream.sources.file import stream_fps
from stream.sources.live import LiveReader, LiveSource

log = logging.getLogger(__name__)


def _reason(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg).strip()


class NetworkSource(LiveSource):
    def __init__(
        self,
        url: str,
        *,
        reconnect: int = -1,
        read_timeout: float = 5.0,
        open_timeout: float = 10.0,
        backoff_min: float = 0.5,
        backoff_max: float = 5.0,
        uri: str | None = None,
    ) -> None:
        self.url = url
        self.reconnect = reconnect
        self.read_timeout = read_timeout
        self.open_timeout = open_timeout
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        self.uri = uri or url
        self.stats = SourceStats(extra={"reconnect_failures": 0})
        self._reader: LiveReader | None = None

    def _ffmpeg_options(self) -> dict[str, str]:
        opts = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "1000000"}
        if self.url.lower().startswith(("rtsp://", "rtsps://")):
            opts["rtsp_transport"] = "tcp"  # UDP RTP loses packets -> smeared frames
        return opts

    def _connect(self) -> tuple[av.container.InputContainer, Iterator[np.ndarray], np.ndarray]:
        """Open the stream and decode its first frame; SourceError with FFmpeg's reason otherwise."""
        try:
            container = av.open(
                self.url, options=self._ffmpeg_options(), timeout=(self.open_timeout, self.read_timeout)
            )
        except (av.error.FFmpegError, OSError) as e:
            raise SourceError(f"{self.uri}: cannot open stream ({_reason(e)})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.uri}: stream has no video")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threads would hold back (threads - 1) frames of latency
        self._fps = stream_fps(stream)
        frames = self._decode(container, stream)
        try:
            first = next(frames, None)
        except (av.error.FFmpegError, OSError) as e:
            container.close()
            raise SourceError(f"{self.uri}: no frame received ({_reason(e)})") from None
        if first is not None:
            return container, frames, first
        container.close()
        raise SourceError(f"{self.uri}: stream ended before its first frame")

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
        container, frames, first = self._connect()
        h, w = first.shape[:2]
        self._reader = LiveReader(self.uri, self.stats)
        self._reader.start(lambda reader: self._loop(reader, container, frames, first))
        return SourceInfo(uri=self.uri, width=w, height=h, fps=self._fps, live=True)

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
                    last_error = str(e)
                    if 0 <= self.reconnect < failures:
                        return (
                            f"{self.uri}: gave up after {failures} failed reconnect attempts ({last_error})"
                        )
                    log.info("%s: reconnect attempt %d failed; next in %.1f s", self.uri, failures, backoff)
                    reader.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                failures = 0
                backoff = self.backoff_min
                self.stats.reconnects += 1
                log.warning("%s: reconnected (%d so far)", self.uri, self.stats.reconnects)
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
                log.warning("%s: stream dropped (%s); reconnecting", self.uri, last_error)
        return None

    def join_timeout(self) -> float:
        return self.read_timeout + 1.0  # a blocked read ends within read_timeout
