"""WebRTC for the live view (aiortc): the overlay as a real video track (VP8), per-frame stats on a data
channel, signalled by one offer/answer POST to the live-view HTTP server (stream/sinks/http_view.py).

aiortc runs on its own asyncio loop in one thread; the pipeline thread only calls ``notify()`` (a
wake-up, and only while a peer is connected). Each peer's track sends the newest overlay when it is
ready for one, at most ``max_fps`` a second, so a slow peer skips frames and never slows anything.

Every frame sent is announced on the peer's data channel ("stats", opened by the page) as
``{"type": "frame", "seq", "frame_index", "pts", "capture", "sent", "latency_ms", "drops", "fps"}``:
``pts`` is the frame's RTP time in 90 kHz units *before* the random offset RTP adds, so the page can
match a decoded frame (``requestVideoFrameCallback``'s ``rtpTimestamp``) with its capture time and
report glass-to-glass latency (stream/static/webrtc.html finds the offset from the first frames).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import threading
import time
from collections.abc import Callable
from typing import Any

CLOCK = 90000  # RTP video clock
_MAX_SDP = 64 * 1024


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._event: asyncio.Event | None = None
        self._t0 = time.time()

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
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
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
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
            pc.addTrack(track)  # takes the offer's video transceiver
            await pc.setLocalDescription(await pc.createAnswer())  # aiortc gathers all candidates here
        except BaseException:
            self.peers.discard(pc)
            await pc.close()
            raise
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def _close_peers(self) -> None:
        for pc in list(self.peers):
            await pc.close()
        self.peers.clear()

    async def next_frame(self, after: int, min_interval: float, last_sent: float):
        """The newest frame after number ``after``, no sooner than ``min_interval`` after the last."""
        while True:
            event = self._event
            got = self.latest()
            wait = last_sent + min_interval - time.monotonic()
            if got is not None and got[1] != after and wait <= 0:
                return got
            try:
                await asyncio.wait_for(event.wait(), max(wait, 0.5) if wait > 0 else 0.5)
            except TimeoutError:
                pass


_TRACK_CLASS: type | None = None


def overlay_track(server: WebRtcServer):
    """A new video track for one peer (the class is made on first use: aiortc is imported only then)."""
    global _TRACK_CLASS
    if _TRACK_CLASS is None:
        _TRACK_CLASS = _make_track_class()
    return _TRACK_CLASS(server)


def _make_track_class() -> type:
    import av
    from aiortc import MediaStreamTrack

    class OverlayTrack(MediaStreamTrack):
        """One peer's video: the newest overlay, stamped with its capture time (90 kHz)."""

        kind = "video"

        def __init__(self, server: WebRtcServer) -> None:
            super().__init__()
            self.server = server
            self.channels: list = []
            self._number = 0
            self._sent_at = 0.0
            self._last_pts = -1

        async def recv(self):
            server = self.server
            got = await server.next_frame(self._number, 1.0 / server.max_fps, self._sent_at)
            image, number, info = got
            self._number = number
            self._sent_at = time.monotonic()
            h, w = image.shape[:2]
            image = image[: h - h % 2, : w - w % 2]  # 4:2:0 video needs even sides
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            now = time.time()
            capture = info.get("capture")
            stamp = capture if isinstance(capture, (int, float)) else now
            # from the capture time, so the page can tell each frame's capture time by its RTP time
            pts = max(self._last_pts + 1, int((stamp - server._t0) * CLOCK))
            self._last_pts = pts
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, CLOCK)
            msg = json.dumps(
                {
                    "type": "frame",
                    "seq": info.get("seq"),
                    "frame_index": info.get("frame_index"),
                    "pts": pts,
                    "capture": capture,
                    "sent": now,
                    "latency_ms": None if capture is None else round(1000 * (now - capture), 1),
                    "drops": info.get("drops", {}),
                    "fps": info.get("fps"),
                    "width": image.shape[1],
                    "height": image.shape[0],
                },
                default=str,
            )
            for ch in self.channels:
                if ch.readyState == "open":
                    ch.send(msg)
            server.frames_sent += 1
            return frame

    return OverlayTrack
