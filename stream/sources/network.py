"""Network streams (rtsp, http(s), tcp, udp, srt, rtmp — anything FFmpeg opens) through PyAV.

``open()`` connects once (bounded by ``open_timeout``). An http(s) URL whose server says it is a file — it
announces the size (Content-Length) and the container a finite duration — is read like a file
(stream.sources.file): every frame in order, nothing dropped, EOS at its end, and a lost connection is an
error rather than an early end. ``live=1`` / ``live=0`` in the URI decide instead of the server.

Anything else is a live stream: ``open()`` decodes the first frame, so an unreachable or non-video stream
is a clear SourceError at once, then a background thread reads the stream into a newest-frame-wins slot
(stream.sources.live). When the stream drops (error, read timeout, end of data) the thread reconnects with
exponential backoff (``backoff_min`` doubling to ``backoff_max``). Every drop, failed attempt and
reconnection is a line for the user (``take_notices``; the capture stage forwards them to the terminal):
the loss with its reason, each failed attempt with its reason and the delay before the next, and the
reconnection with the outage's length. Successful reconnects count in ``stats.reconnects``, failed attempts
in ``stats.extra["reconnect_failures"]``, outages and their seconds in ``stats.outages`` / ``outage_s``.
After the first attempt, ``reconnect`` more are made (-1 = never give up); then reads return EOS whose
error gives the reason, and the run fails with it. A silent stream (no packet for ``read_timeout``
seconds: a camera that hangs, a cable pulled without a TCP reset) counts as lost.

Stale frames: the reader thread decodes every packet (H.264 needs them all) but converts to BGR only the
frame a read takes, so a consumer slower than the camera costs the thread nothing for the frames it
skips and the thread never falls behind the stream. RTSP: ``transport=tcp`` (RTP interleaved in the
RTSP connection, default: passes firewalls and NAT, loses nothing) or ``udp``. Each frame carries the
camera's wall clock at capture (``Frame.camera_time``) from the RTCP sender reports (FFmpeg's
producer-reference-time side data), so glass-to-output latency is measured, not guessed. The URL's
password is never shown: messages use ``stream.redact``.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import av

from stream.redact import redact
from stream.sources.base import Frame, ReadStatus, SourceError, SourceInfo, SourceStats
from stream.sources.file import FileSource, stream_fps, to_bgr
from stream.sources.live import LiveReader, LiveSource

log = logging.getLogger(__name__)

DEFAULT_RECONNECT = (
    10  # retries after the first failed attempt: about 45 s of outage with the default backoff
)


RTSP_TRANSPORTS = ("tcp", "udp")
# a camera clock further than this from ours makes glass-to-output meaningless: not measured then
CAMERA_CLOCK_TOLERANCE_S = 30.0


def _reason(e: BaseException) -> str:
    # strerror leaves out the URL that str(e) quotes; redact() in case a message carries one anyway
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return redact(str(msg).strip())


@dataclass
class _Decoded:
    """What the reader thread offers: the decoded frame, converted to BGR only if a read takes it."""

    frame: av.VideoFrame
    camera_time: float | None


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
        transport: str | None = None,
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
        self.rtsp = url.lower().startswith(("rtsp://", "rtsps://"))
        if transport is not None and (not self.rtsp or transport not in RTSP_TRANSPORTS):
            raise SourceError(f"{redact(url)}: transport={transport!r} needs rtsp:// and tcp or udp")
        self.transport = transport or "tcp"
        self.uri = redact(uri or url)  # what SourceInfo, headers and stats carry: password hidden
        self.label = redact(url)  # what messages show: the URL FFmpeg opens, password hidden
        self.stats = SourceStats(extra={"reconnect_failures": 0})
        self._reader: LiveReader | None = None
        self._file: FileSource | None = None
        self._notices: deque[str] = deque()
        self._last_packet = time.monotonic()
        self._camera_offset: float | None = None  # camera wall clock - stream time (s), from RTCP
        self._clock_noted = False
        self._size: tuple[int, int] | None = None

    def _ffmpeg_options(self) -> dict[str, str]:
        opts = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "1000000"}
        if self.rtsp:
            # tcp: RTP interleaved in the RTSP connection (UDP RTP loses packets -> smeared frames, and
            # is blocked by most firewalls); udp where the camera or network wants it
            opts["rtsp_transport"] = self.transport
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
    ) -> tuple[av.container.InputContainer, Iterator[_Decoded], _Decoded]:
        """Open the stream (unless given) and decode its first frame; SourceError with the reason."""
        self._last_packet = time.monotonic()  # silence counts from here, not from the last session
        container = container or self._open_container()
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.label}: stream has no video")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threads would hold back (threads - 1) frames of latency
        self._fps = stream_fps(stream)
        self._camera_offset = None  # a new session: the camera's clock mapping starts over
        frames = self._decode(container, stream)
        try:
            first = next(frames, None)
        except (av.error.FFmpegError, OSError) as e:
            container.close()
            raise SourceError(f"{self.label}: no frame received ({self._why_lost(e)})") from None
        if first is not None:
            return container, frames, first
        container.close()
        raise SourceError(f"{self.label}: stream ended before its first frame")

    def _decode(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> Iterator[_Decoded]:
        tb = float(stream.time_base or 0.0)
        for packet in container.demux(stream):
            self._last_packet = time.monotonic()
            if tb and packet.pts is not None and packet.has_sidedata("prft"):
                self._camera_clock(packet, tb)
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                self.stats.decode_errors += 1
                continue
            for f in decoded:
                cam = None
                if self._camera_offset is not None and f.pts is not None:
                    cam = f.pts * tb + self._camera_offset
                yield _Decoded(f, cam)

    def _camera_clock(self, packet: av.Packet, tb: float) -> None:
        """The camera's wall clock for this packet's timestamp (AVProducerReferenceTime: int64 wallclock
        in microseconds, then int flags), kept as an offset from stream time; ignored when the camera's
        clock is too far from ours to give a meaningful latency (said once)."""
        wallclock = struct.unpack_from("<q", bytes(packet.get_sidedata("prft")))[0] / 1e6
        skew = time.time() - wallclock
        if abs(skew) > CAMERA_CLOCK_TOLERANCE_S:
            if not self._clock_noted:
                self._clock_noted = True
                self._notice(
                    f"{self.label}: the camera's clock is {skew:+.0f} s from ours; "
                    "glass-to-output latency is not measured"
                )
            return
        self._camera_offset = wallclock - packet.pts * tb

    def _why_lost(self, e: BaseException) -> str:
        """The reason a read failed; a read that timed out says how long the stream was silent."""
        silent = time.monotonic() - self._last_packet
        if silent >= 0.9 * self.read_timeout:
            return f"no data for {silent:.1f} s"
        return _reason(e)

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
        w, h = first.frame.width, first.frame.height
        self._size = (w, h)
        self._reader = LiveReader(self.label, self.stats)
        self._reader.start(lambda reader: self._loop(reader, container, frames, first))
        return SourceInfo(uri=self.uri, width=w, height=h, fps=self._fps, live=True)

    def read(self, timeout: float = 1.0) -> Frame:
        if self._file is not None:
            return self._file.read(timeout)
        frame = super().read(timeout)
        if frame.status is ReadStatus.OK and isinstance(frame.image, _Decoded):
            d = frame.image  # converted here, in the reader's consumer: skipped frames never are
            frame.image = to_bgr(d.frame)
            frame.camera_time = d.camera_time
        return frame

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
        line = redact(line)
        log.warning("%s", line)  # the stage log keeps them too
        self._notices.append(line)

    def _publish(self, reader: LiveReader, d: _Decoded) -> None:
        size = (d.frame.width, d.frame.height)
        if self._size is not None and size != self._size:
            self._notice(
                f"{self.label}: frame size changed from {self._size[0]}x{self._size[1]} "
                f"to {size[0]}x{size[1]}"
            )
        self._size = size
        reader.publish(d)  # type: ignore[arg-type]  # read() converts it

    def _went_down(self) -> None:
        self.stats.outages += 1
        self.stats.down_since = time.monotonic()

    def _came_back(self) -> float:
        """End the outage in progress; returns its length in seconds."""
        if self.stats.down_since is None:
            return 0.0
        length = time.monotonic() - self.stats.down_since
        self.stats.outage_s += length
        self.stats.down_since = None
        return length

    def _loop(
        self,
        reader: LiveReader,
        container: av.container.InputContainer | None,
        frames: Iterator[_Decoded] | None,
        first: _Decoded | None,
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
                        down = time.monotonic() - (self.stats.down_since or time.monotonic())
                        return redact(
                            f"{self.label}: gave up after {failures} failed reconnect attempts "
                            f"({last_error}); no stream for {down:.1f} s (option reconnect={self.reconnect})"
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
                length = self._came_back()
                after = f", {failures} failed attempt{'s' if failures != 1 else ''}" if failures else ""
                self._notice(
                    f"{self.label}: reconnected after {length:.1f} s without a stream{after}; "
                    f"{self.stats.reconnects} reconnect{'s' if self.stats.reconnects != 1 else ''}, "
                    f"{self.stats.outage_s:.1f} s of outage in total"
                )
                failures = 0
                backoff = self.backoff_min
            try:
                if first is not None:
                    self._publish(reader, first)
                    first = None
                for d in frames or ():
                    if reader.stopping:
                        break
                    self._publish(reader, d)
                last_error = "stream ended"
            except (av.error.FFmpegError, OSError) as e:
                last_error = self._why_lost(e)
            finally:
                container.close()
                container, frames = None, None
            if not reader.stopping:
                self._went_down()
                budget = "never giving up" if self.reconnect < 0 else f"up to {self.reconnect + 1} attempts"
                self._notice(
                    f"{self.label}: stream lost ({last_error}); reconnecting now ({budget}, "
                    f"then every {self.backoff_min:g}-{self.backoff_max:g} s)"
                )
        return None

    def join_timeout(self) -> float:
        return self.read_timeout + 1.0  # a blocked read ends within read_timeout
