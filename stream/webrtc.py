"""WebRTC for the live view (aiortc): the overlay as a real video track (VP8), per-frame stats on a data
channel, signalled by one offer/answer POST to the live-view HTTP server (stream/sinks/http_view.py).

aiortc runs on its own asyncio loop in one thread; the pipeline thread only calls ``notify()`` (a
wake-up, and only while a peer is connected). Each peer's track sends the newest overlay as soon as it
exists (no frame clock), at most ``max_fps`` a second on average (stream/pacing.py), so a slow peer
skips frames and never slows anything.

Latency: a browser's receiver normally holds each frame in its jitter buffer for the estimated network
jitter + decode time + a fixed render delay (about 13 ms on loopback in Chromium) to play smoothly. A
live view wants the frame now, so when the offer lists the playout-delay RTP header extension
(Chromium does) the answer accepts it and every packet says "min 0, max 0": Chromium then decodes and
renders each frame as it completes (a max of even 10 ms brings the whole jitter-buffer delay back).
The VP8 encoder is aiortc's with libvpx at its fastest realtime speed (``cpu-used`` 16 instead of
aiortc's adaptive -6: a third of the encode time, about 1 dB PSNR less at the same bitrate), keeping
aiortc's bitrate control and keyframes on request, and small frames are encoded on the loop itself
(``_SmallInline``). aiortc (pinned) has no API for the extension or the encoder: ``_playout_delay``
and ``_fast_encoder`` each replace one private attribute of its sender, and are skipped, with the
reason in ``low_latency_off`` / ``encoder_off``, if it is not there.

Every frame sent is announced on the peer's data channel ("stats", opened by the page), once its
packets are out (``sent``; the message never competes with the video), as
``{"type": "frame", "seq", "frame_index", "pts", "capture", "sent", "latency_ms", "drops", "fps"}``:
``pts`` is the frame's RTP time in 90 kHz units *before* the random offset RTP adds, so the page can
match a decoded frame (``requestVideoFrameCallback``'s ``rtpTimestamp``) with its capture time and
report glass-to-glass latency (stream/static/webrtc.html finds the offset from the first frames).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from stream.pacing import Pacer

CLOCK = 90000  # RTP video clock
_MAX_SDP = 64 * 1024
PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
# min and max playout delay, 12 bits each in 10 ms units: 0/0 = render each frame as soon as it is decoded
PLAYOUT_DELAY_ZERO = b"\x00\x00\x00"


# aiortc encodes every frame through the loop's default executor: frames up to this size are encoded
# right on the loop (under a millisecond at 480x360) instead of paying two thread hand-offs and the GIL
# waits around them (about 1 ms on a loaded 2-core host); bigger ones go to the thread pool
INLINE_ENCODE_PIXELS = 640 * 480


class _SmallInline(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: small frames encoded at once, in the caller (the loop)."""

    def submit(self, fn, /, *args, **kwargs):
        frame = args[0] if args else None
        w, h = getattr(frame, "width", None), getattr(frame, "height", None)
        if not isinstance(w, int) or not isinstance(h, int) or w * h > INLINE_ENCODE_PIXELS:
            return super().submit(fn, *args, **kwargs)  # not a frame (a DNS lookup, ...), or a big one
        done: concurrent.futures.Future = concurrent.futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except Exception as e:  # handed to the awaiting sender, as the pool would
            done.set_exception(e)
        return done


class WebRtcError(Exception):
    """An offer that cannot be answered: ``status`` is the HTTP status to reply with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def available() -> str | None:
    """None when aiortc can be used here, else why not (one line)."""
    try:
        import aiortc  # noqa: F401
    except ImportError as e:
        return f"aiortc is not installed ({e}); pip install 'segstream[webrtc]'"
    return None


# latest() -> (BGR image, frame number, info dict with seq/frame_index/capture/drops/fps) or None
Latest = Callable[[], "tuple[Any, int, dict[str, Any]] | None"]


class WebRtcServer:
    """Answers offers and feeds each peer the newest overlay; start() / close() around its life."""

    def __init__(self, latest: Latest, *, max_fps: float = 15.0, max_peers: int = 4) -> None:
        self.latest = latest
        self.max_fps = max_fps
        self.max_peers = max_peers
        self.peers: set = set()
        self.frames_sent = 0
        self.codec: str | None = None  # the video codec of the last answer
        self.low_latency_peers = 0  # answers that set a zero playout delay
        self.low_latency_off: str | None = None  # why the last answer has no zero playout delay
        self.encoder_off: str | None = None  # why the last peer has aiortc's own encoder
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._event: asyncio.Event | None = None
        self._t0 = time.time()

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.set_default_executor(_SmallInline(max_workers=max(2, min(8, self.max_peers))))
            self._loop = loop
            self._event = asyncio.Event()
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="segstream-webrtc")
        self._thread.start()
        ready.wait(5)

    # ------------------------------------------------------------------ from other threads
    def notify(self) -> None:
        """A new frame is there (pipeline thread): wakes the tracks, only when someone watches."""
        if self.peers and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake)

    def answer(self, offer: Any, timeout: float = 15.0) -> dict[str, str]:
        """The SDP answer to an offer {"sdp", "type": "offer"} (HTTP handler thread); WebRtcError."""
        if (
            not isinstance(offer, dict)
            or offer.get("type") != "offer"
            or not isinstance(offer.get("sdp"), str)
        ):
            raise WebRtcError(400, 'expected a JSON object {"sdp": "...", "type": "offer"}')
        if len(offer["sdp"]) > _MAX_SDP:
            raise WebRtcError(413, f"SDP offer over {_MAX_SDP} bytes")
        if len(self.peers) >= self.max_peers:
            raise WebRtcError(503, f"{self.max_peers} WebRTC viewers already (each costs an encoder)")
        if self._loop is None:
            raise WebRtcError(503, "WebRTC is not running")
        fut = asyncio.run_coroutine_threadsafe(self._answer(offer["sdp"]), self._loop)
        try:
            return fut.result(timeout)
        except WebRtcError:
            raise
        except TimeoutError:
            fut.cancel()
            raise WebRtcError(504, f"no answer within {timeout:g} s") from None
        except Exception as e:  # noqa: BLE001 - an SDP aiortc cannot parse or negotiate
            raise WebRtcError(400, f"cannot answer this offer: {e}") from None

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._close_peers(), loop)
        try:
            fut.result(5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    # ------------------------------------------------------------------ on the loop
    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    async def _answer(self, sdp: str) -> dict[str, str]:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        # host candidates only: the view is on this host or its LAN, and a default STUN server would
        # mean a DNS lookup and a packet to a third party for every viewer
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers.add(pc)
        track = overlay_track(self)
        channels = track.channels

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            channels.append(channel)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.peers.discard(pc)
                await pc.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise WebRtcError(400, "the offer has no video (add a recvonly video transceiver)")
            sender = pc.addTrack(track)  # takes the offer's video transceiver
            ext_id = offered_extension_id(sdp, PLAYOUT_DELAY_URI)
            self.low_latency_off = _playout_delay(sender, ext_id)
            await pc.setLocalDescription(await pc.createAnswer())  # aiortc gathers all candidates here
            self.codec = video_codec(pc.localDescription.sdp)
            self.encoder_off = _fast_encoder(sender, self.codec)
        except BaseException:
            self.peers.discard(pc)
            await pc.close()
            raise
        answer = pc.localDescription.sdp
        if self.low_latency_off is None:
            answer = add_video_extension(answer, ext_id, PLAYOUT_DELAY_URI)
            self.low_latency_peers += 1
        return {"sdp": answer, "type": pc.localDescription.type}

    async def _close_peers(self) -> None:
        for pc in list(self.peers):
            await pc.close()
        self.peers.clear()

    async def next_frame(self, after: int, pacer: Pacer):
        """The newest frame after number ``after``, as soon as it exists and ``pacer`` allows."""
        while True:
            event = self._event  # before latest(): a frame that lands in between still wakes us
            got = self.latest()
            if got is not None and got[1] != after:
                wait = pacer.wait_s()
                if wait <= 0:
                    pacer.take()
                    return got
                await asyncio.sleep(wait)  # over the rate cap: then send whatever is newest
                continue
            try:
                await asyncio.wait_for(event.wait(), 0.5)
            except TimeoutError:
                pass


def offered_extension_id(sdp: str, uri: str) -> int | None:
    """The id the offer's video section gives RTP header extension ``uri`` (None: not offered)."""
    video = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            video = line.startswith("m=video")
        elif video and line.startswith("a=extmap:"):
            head, _, rest = line[len("a=extmap:") :].partition(" ")
            ext_id = head.split("/")[0]
            if rest.split(" ")[0] == uri and ext_id.isdigit():
                return int(ext_id)
    return None


def add_video_extension(sdp: str, ext_id: int, uri: str) -> str:
    """``sdp`` with ``a=extmap:ID URI`` added to its video section (before its first attribute)."""
    out: list[str] = []
    video = done = False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            video = line.startswith("m=video")
        if video and not done and line.startswith("a="):
            out.append(f"a=extmap:{ext_id} {uri}")
            done = True
        out.append(line)
    return "\r\n".join(out)


def video_codec(sdp: str) -> str | None:
    """The name of the first (= the negotiated) codec of the SDP's video section, e.g. "VP8"."""
    first, video = None, False
    for line in sdp.splitlines():
        if line.startswith("m="):
            video = line.startswith("m=video")
            if video:
                first = (line.split(" ")[3:] or [None])[0]
        elif video and first is not None and line.startswith(f"a=rtpmap:{first} "):
            return line.split(" ", 1)[1].split("/")[0]
    return None


# aiortc's VP8 settings (aiortc/codecs/vpx.py) but libvpx's fastest realtime speed
VP8_CPU_USED = "16"


def _fast_encoder(sender: Any, codec: str | None) -> str | None:
    """Give ``sender`` a low-latency encoder for ``codec``; None when done, else why not."""
    global _ENCODERS
    if _ENCODERS is None:
        _ENCODERS = _make_encoder_classes()
    if codec not in _ENCODERS:
        return f"no low-latency encoder for {codec}"
    attr = "_RTCRtpSender__encoder"  # aiortc 1.16 makes one on the first frame unless one is there
    if getattr(sender, attr, False) is not None:
        return "this aiortc has no encoder hook (pinned: aiortc==1.16.0)"
    setattr(sender, attr, _ENCODERS[codec]())
    return None


_ENCODERS: dict[str, type] | None = None


def _make_encoder_classes() -> dict[str, type]:
    import multiprocessing

    import av
    from aiortc.codecs import vpx
    from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase

    class FastVp8Encoder(vpx.Vp8Encoder):
        """aiortc's Vp8Encoder.encode with ``cpu-used`` = VP8_CPU_USED (same packetizer, bitrate
        control and forced keyframes)."""

        def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
            if frame.format.name != "yuv420p":
                frame = frame.reformat(format="yuv420p")
            rate = self.target_bitrate
            if self.codec is not None and (
                (frame.width, frame.height) != (self.codec.width, self.codec.height)
                or abs(rate - self.codec.bit_rate) / self.codec.bit_rate > 0.1
            ):
                self.codec = None  # a new size, or bitrate feedback moved by over 10 %
            if force_keyframe:
                frame.pict_type = av.video.frame.PictureType.I
            if self.codec is None:
                codec = av.CodecContext.create("libvpx", "w")
                codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, "yuv420p"
                codec.bit_rate = rate
                codec.gop_size, codec.qmin, codec.qmax = 3000, 2, 56
                codec.options = {
                    "bufsize": str(rate),
                    "cpu-used": VP8_CPU_USED,
                    "deadline": "realtime",
                    "lag-in-frames": "0",
                    "minrate": str(rate),
                    "maxrate": str(rate),
                    "noise-sensitivity": "4",
                    "overshoot-pct": "15",
                    "partitions": "0",
                    "static-thresh": "1",
                    "undershoot-pct": "100",
                }
                codec.thread_count = vpx.number_of_threads(
                    frame.width * frame.height, multiprocessing.cpu_count()
                )
                self.codec = codec
            data = b"".join(bytes(p) for p in self.codec.encode(frame))
            payloads = self._packetize(data, self.picture_id)
            self.picture_id = (self.picture_id + 1) % (1 << 15)
            return payloads, convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)

    return {"VP8": FastVp8Encoder}


def _playout_delay(sender: Any, ext_id: int | None) -> str | None:
    """Make ``sender`` put a zero playout delay in every RTP packet; None when done, else why not."""
    if ext_id is None:
        return "the browser's offer has no playout-delay extension"
    if not 1 <= ext_id <= 14:  # one-byte header ids; aiortc would switch every packet to two-byte headers
        return f"the offer's playout-delay extension id {ext_id} is not 1-14"
    from aiortc import rtp

    # aiortc 1.16 serializes each packet's header extensions through this (name-mangled) map
    attr = "_RTCRtpSender__rtp_header_extensions_map"
    if not isinstance(getattr(sender, attr, None), rtp.HeaderExtensionsMap):
        return "this aiortc has no header-extension hook (pinned: aiortc==1.16.0)"

    class WithPlayoutDelay(rtp.HeaderExtensionsMap):
        def set(self, values: Any) -> tuple[int, bytes]:
            profile, value = super().set(values)
            exts = list(rtp.unpack_header_extensions(profile, value))
            return rtp.pack_header_extensions([*exts, (ext_id, PLAYOUT_DELAY_ZERO)])

    setattr(sender, attr, WithPlayoutDelay())
    return None


_TRACK_CLASS: type | None = None


def overlay_track(server: WebRtcServer):
    """A new video track for one peer (the class is made on first use: aiortc is imported only then)."""
    global _TRACK_CLASS
    if _TRACK_CLASS is None:
        _TRACK_CLASS = _make_track_class()
    return _TRACK_CLASS(server)


def _make_track_class() -> type:
    import av
    import cv2
    from aiortc import MediaStreamTrack

    class OverlayTrack(MediaStreamTrack):
        """One peer's video: the newest overlay, stamped with its capture time (90 kHz)."""

        kind = "video"

        def __init__(self, server: WebRtcServer) -> None:
            super().__init__()
            self.server = server
            self.channels: list = []
            self._number = 0
            self._pacer = Pacer(server.max_fps)
            self._last_pts = -1
            self._announce: dict[str, Any] | None = None

        async def recv(self):
            # aiortc asks for the next frame once the last one's packets are out: announce that one
            # now, so its data-channel message never delays (or shares the loop with) the video
            self._flush_announcement()
            server = self.server
            image, number, info = await server.next_frame(self._number, self._pacer)
            self._number = number
            h, w = image.shape[:2]
            image = image[: h - h % 2, : w - w % 2]  # 4:2:0 video needs even sides
            # BT.601 limited range like swscale's, in a third of the time
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
            capture = info.get("capture")
            stamp = capture if isinstance(capture, (int, float)) else time.time()
            # from the capture time, so the page can tell each frame's capture time by its RTP time
            pts = max(self._last_pts + 1, int((stamp - server._t0) * CLOCK))
            self._last_pts = pts
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, CLOCK)
            self._announce = {
                "type": "frame",
                "seq": info.get("seq"),
                "frame_index": info.get("frame_index"),
                "pts": pts,
                "capture": capture,
                "drops": info.get("drops", {}),
                "fps": info.get("fps"),
                "width": image.shape[1],
                "height": image.shape[0],
            }
            server.frames_sent += 1
            return frame

        def _flush_announcement(self) -> None:
            msg, self._announce = self._announce, None
            if msg is None:
                return
            now = time.time()
            capture = msg["capture"]
            msg["sent"] = now  # the frame's packets are on the socket
            msg["latency_ms"] = None if capture is None else round(1000 * (now - capture), 1)
            text = json.dumps(msg, default=str)
            for ch in self.channels:
                if ch.readyState == "open":
                    ch.send(text)

    return OverlayTrack
