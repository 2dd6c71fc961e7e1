"""``zmq-pub://HOST:PORT?...``: publish every mask as data (docs/PROTOCOL.md).

Up to three sockets, one per delivery need:
  * PUB on PORT, lossy: a small send HWM, so a slow subscriber loses messages (it sees seq gaps)
    and never slows the pipeline. An XPUB, so the publisher knows whether anyone subscribes: while
    no subscriber (and no recorder) is there, masks are not encoded at all (counted as
    ``unsubscribed``), so a publisher nobody listens to costs the pipeline nothing;
  * REP on PORT+1 (``classes=``): returns the class table, so late joiners need no restart;
  * ROUTER for recorders, only when asked (``lossless=on`` for PORT+2, ``lossless=P``, or
    ``wait_recorders=N``): recorders grant credit. On a file source the publisher waits for credit
    (backpressure) but at most ``lossless_timeout`` seconds per message; on a live source it never
    waits (a recorder without credit misses that mask). A recorder that breaks the credit protocol,
    stops reading, or leaves the publisher waiting too long is dropped and counted: a misbehaving
    recorder loses its place, never the pipeline its pace.

Options: encoding=raw|png|rle|coco-rle|polygons (the last two: a JSON segments document per frame,
per class or with components=1 per connected component; polygons simplified to tolerance=PIXELS, default
1), confidence=raw|png, maps=entropy,margin (uncertainty planes, one part each; maps_encoding=raw|png,
default raw), depth=raw|png (RGB-D runs: the paired depth image, uint16 mm at the mask's size, one part),
overlay=1 (JPEG part), jpeg_quality=80, hwm=4,
lossless=on|PORT|off, wait_recorders=N (open() waits for N recorders, so a file run reaches them
from its first frame), lossless_timeout=S, curve_secret=FILE, allow=DIR.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass

from stream.maskcodec import segments
from stream.maskcodec.segments import DEFAULT_TOLERANCE
from stream.messages import (
    CONFIDENCE_ENCODINGS,
    DEPTH_ENCODINGS,
    MASK_ENCODINGS,
    SEGMENT_ENCODINGS,
    UNCERTAINTY_MAPS,
    Endpoints,
    encode_classes_reply,
    encode_end_message,
    encode_mask_message,
    parse_endpoint,
)
from stream.sinks.base import Result, Sink, SinkError, StreamInfo

_KNOWN = {
    "encoding",
    "size",
    "confidence",
    "maps",
    "maps_encoding",
    "overlay",
    "jpeg_quality",
    "hwm",
    "wait_recorders",
    "lossless_timeout",
    "curve_secret",
    "allow",
    "stream",
    "tolerance",
    "components",
    "depth",
}


# Credit a recorder may hold at once: bounds what the publisher queues for it (a recorder that grants
# a billion credits and never reads cannot make the publisher buffer the whole stream in memory).
MAX_CREDIT = 64
LOSSLESS_TIMEOUT_S = 5.0
_MAX_COMMANDS_PER_PUMP = 256  # a flood of control messages cannot starve the pipeline thread
_BANNED_MEMORY = 1024


@dataclass
class _Recorder:
    credit: int
    last_credit: float  # monotonic time of the last credit it granted


class ZmqPubSink(Sink):
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.ep: Endpoints = parse_endpoint(spec)
        opts = self.ep.options
        unknown = set(opts) - _KNOWN
        if unknown:
            raise SinkError(f"{spec}: unknown option(s) {sorted(unknown)} (known: {sorted(_KNOWN)})")
        self.encoding = opts.get("encoding", "raw")
        if self.encoding not in MASK_ENCODINGS:
            raise SinkError(f"{spec}: encoding={self.encoding} (expected one of {MASK_ENCODINGS})")
        self.confidence = opts.get("confidence") or None
        if self.confidence is not None and self.confidence not in CONFIDENCE_ENCODINGS:
            raise SinkError(f"{spec}: confidence={self.confidence} (expected one of {CONFIDENCE_ENCODINGS})")
        # uncertainty maps: made by the infer stage only because this sink asks (Sink.wants_maps)
        self.maps = tuple(m.strip() for m in opts.get("maps", "").split(",") if m.strip())
        bad = [m for m in self.maps if m not in UNCERTAINTY_MAPS]
        if bad:
            raise SinkError(
                f"{spec}: maps={opts['maps']}: {', '.join(bad)} (expected {','.join(UNCERTAINTY_MAPS)})"
            )
        self.maps_encoding = opts.get("maps_encoding", "raw")
        self.depth = opts.get("depth") or None  # RGB-D: republish the paired depth image
        if self.depth is not None and self.depth not in DEPTH_ENCODINGS:
            raise SinkError(f"{spec}: depth={self.depth} (expected one of {', '.join(DEPTH_ENCODINGS)})")
        self.wants_depth = self.depth is not None
        if self.maps_encoding not in CONFIDENCE_ENCODINGS:
            raise SinkError(
                f"{spec}: maps_encoding={self.maps_encoding} (expected one of {CONFIDENCE_ENCODINGS})"
            )
        if "maps_encoding" in opts and not self.maps:
            raise SinkError(f"{spec}: maps_encoding applies only with maps=entropy,margin")
        try:
            self.overlay = opts.get("overlay", "0").lower() in ("1", "true", "yes", "jpeg")
            self.jpeg_quality = int(opts.get("jpeg_quality", 80))
            self.hwm = int(opts.get("hwm", 4))
            self.wait_recorders = int(opts.get("wait_recorders", 0))
            self.lossless_timeout = float(opts.get("lossless_timeout", LOSSLESS_TIMEOUT_S))
            self.tolerance = float(opts.get("tolerance", DEFAULT_TOLERANCE))
        except ValueError as e:
            raise SinkError(f"{spec}: bad numeric option ({e})") from None
        if not 0 <= self.tolerance <= 100:
            raise SinkError(f"{spec}: tolerance={opts['tolerance']} (expected pixels, 0..100)")
        components = opts.get("components", "0").lower()
        if components not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
            raise SinkError(f"{spec}: components={opts['components']} (expected 0 or 1)")
        if ("tolerance" in opts or "components" in opts) and self.encoding not in SEGMENT_ENCODINGS:
            raise SinkError(f"{spec}: tolerance and components apply to encoding=coco-rle|polygons only")
        self.segments = {"components": components in ("1", "true", "yes", "on")}
        if self.encoding == "polygons":
            self.segments["tolerance"] = self.tolerance
        if self.lossless_timeout <= 0 or self.wait_recorders < 0 or self.hwm < 1:
            raise SinkError(f"{spec}: lossless_timeout must be > 0, wait_recorders >= 0, hwm >= 1")
        if self.wait_recorders and self.ep.lossless_port is None:
            raise SinkError(f"{spec}: wait_recorders needs the lossless endpoint (lossless=off given)")
        # the recorder endpoint is opened only when asked for: by name, or by waiting for recorders
        self.lossless = self.ep.lossless_port is not None and (
            self.ep.lossless_requested or self.wait_recorders > 0
        )
        self.curve_secret = opts.get("curve_secret")
        self.allow = opts.get("allow")
        if bool(self.curve_secret) != bool(self.allow):
            raise SinkError(
                f"{spec}: CURVE needs both curve_secret=SERVER.key_secret and allow=DIR_OF_CLIENT_KEYS"
            )
        self.stream_override = opts.get("stream")
        # masks (and confidence/maps) at a requested size instead of the frame's: a 4K camera's consumer
        # that wants 960x540 class ids gets 16x fewer bytes; class ids are resized nearest (never invented)
        self.size: tuple[int, int] | None = None
        if "size" in opts:
            m = re.fullmatch(r"(\d+)[xX](\d+)", opts["size"])
            if not m or not (0 < int(m.group(1)) <= 16384 and 0 < int(m.group(2)) <= 16384):
                raise SinkError(f"{spec}: size={opts['size']} (expected WIDTHxHEIGHT, e.g. 960x540)")
            self.size = (int(m.group(1)), int(m.group(2)))
        self.wants_overlay = self.overlay
        self.wants_confidence = self.confidence is not None
        self.wants_maps = self.maps
        self.stats = {
            "published": 0,  # every mask of the stream, those nobody was subscribed to included
            "unsubscribed": 0,  # masks not encoded: no subscriber and no recorder was there
            "lossless_sent": 0,
            "recorders": 0,
            "recorders_dropped": 0,  # dropped for any reason (includes recorders_refused)
            "recorders_refused": 0,  # broke the credit protocol
            "lossless_missed": 0,  # masks a live-source recorder missed for lack of credit
            "lossless_wait_s": 0.0,
            "classes_requests": 0,
        }
        self._ctx = None
        self._auth = None
        self._pub = self._router = None
        self._rep_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._recorders: dict[bytes, _Recorder] = {}
        self._banned: dict[bytes, None] = {}  # dropped identities: their later messages are ignored
        self._live = False
        self._last_seq = -1
        self._subscriptions = 0  # (subscriber, topic) pairs, from the XPUB's (un)subscribe messages

    # ------------------------------------------------------------------------------------ open
    def open(self, info: StreamInfo) -> None:
        import zmq

        self.info = info
        self._live = bool(info.live)
        self.warm()
        self.stream = self.stream_override or info.stream_id
        self.classes = info.classes
        self._ctx = zmq.Context()
        try:
            if self.curve_secret:
                self._start_curve()
            elif self.ep.all_interfaces:
                print(
                    f"segstream: WARNING: {self.spec} binds all interfaces without encryption; anyone on the "
                    "network can read the masks (add curve_secret=...&allow=... or bind 127.0.0.1)",
                    file=sys.stderr,
                )
            # options before bind: a listener copies them for every connection it accepts later
            # small queue + small kernel buffer bound how far a slow lossy subscriber lags behind
            # XPUB_VERBOSER: every subscription and every unsubscription (a subscriber leaving included)
            # reaches us, so the count is exact, not only a topic's first and last
            self._pub = self._bind(
                zmq.XPUB, self.ep.port, {zmq.SNDHWM: self.hwm, zmq.SNDBUF: 1 << 20, zmq.XPUB_VERBOSER: 1}
            )
            rep = self._bind(zmq.REP, self.ep.classes_port, {})
            if self.lossless:
                # credit bounds each recorder's queue; the HWM above it only catches a recorder that
                # stopped reading (send then fails with EAGAIN and the recorder is dropped)
                self._router = self._bind(
                    zmq.ROUTER,
                    self.ep.lossless_port,
                    {zmq.ROUTER_MANDATORY: 1, zmq.SNDHWM: MAX_CREDIT + 8, zmq.RCVHWM: 1000},
                )
        except BaseException:
            self.close()
            raise
        self._reply = encode_classes_reply(self.stream, self.classes)
        self._rep_thread = threading.Thread(
            target=self._serve_classes, args=(rep,), daemon=True, name="segstream-classes"
        )
        self._rep_thread.start()
        if self.wait_recorders:
            self._await_recorders(self.wait_recorders)

    def warm(self) -> None:
        if self.encoding in SEGMENT_ENCODINGS:
            segments.warm(self.encoding)

    def _start_curve(self) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        from stream.keys import check_public_dir, load_secret

        self._server_public, self._server_secret = load_secret(self.curve_secret)
        allow = check_public_dir(self.allow)
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(allow))

    def _bind(self, kind: int, port: int, options: dict[int, int]):
        import zmq

        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in options.items():
            sock.setsockopt(opt, value)
        if self._auth is not None:
            sock.curve_secretkey = self._server_secret
            sock.curve_publickey = self._server_public
            sock.curve_server = True
        addr = self.ep.tcp(port, bind=True)
        try:
            sock.bind(addr)
        except zmq.ZMQError as e:
            sock.close(0)
            raise SinkError(f"{self.spec}: cannot bind {addr}: {e.strerror}") from None
        return sock

    def _serve_classes(self, rep) -> None:
        import zmq

        try:
            while not self._stop.is_set():
                if rep.poll(100, zmq.POLLIN):
                    rep.recv_multipart()  # any request gets the table; the request is only a knock
                    rep.send(self._reply)
                    self.stats["classes_requests"] += 1
        except zmq.ZMQError:
            pass  # context terminated during close
        finally:
            rep.close(0)

    # -------------------------------------------------------------------------------- lossless
    def _pump(self, timeout_ms: int) -> None:
        """Read recorder credit/bye messages; waits at most ``timeout_ms`` for the first one."""
        import zmq

        handled = 0
        while handled < _MAX_COMMANDS_PER_PUMP and self._router.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            handled += 1
            frames = self._router.recv_multipart()
            ident, cmd = frames[0], frames[1] if len(frames) > 1 else b""
            if ident in self._banned:
                continue
            if cmd == b"bye" and len(frames) == 2:
                if self._recorders.pop(ident, None) is not None:
                    self.stats["recorders"] -= 1
                continue
            n = _credit(frames)
            if n is None:
                self._refuse(ident, frames)
                continue
            now = time.monotonic()
            rec = self._recorders.get(ident)
            if rec is None:
                self._recorders[ident] = rec = _Recorder(0, now)
                self.stats["recorders"] += 1
            rec.credit = min(MAX_CREDIT, rec.credit + n)
            rec.last_credit = now

    def _refuse(self, ident: bytes, frames: list[bytes]) -> None:
        what = b" ".join(f[:16] for f in frames[1:3])[:40]
        self.stats["recorders_refused"] += 1
        if ident in self._recorders:
            self._drop(ident, f"broke the credit protocol ({what!r})")
        else:
            self._ban(ident)
            self._warn(f"refused {ident.hex()} on {self.spec}: not a credit message ({what!r})")

    def _await_recorders(self, n: int) -> None:
        # bounded by lossless_timeout: longer would look like a stalled stage to the supervisor
        deadline = time.monotonic() + self.lossless_timeout
        while len(self._recorders) < n:
            if time.monotonic() > deadline:
                self.close()
                raise SinkError(
                    f"{self.spec}: only {len(self._recorders)} of wait_recorders={n} recorders "
                    f"connected to {self.ep.tcp(self.ep.lossless_port)}"
                )
            self._pump(100)

    def _ban(self, ident: bytes) -> None:
        self._banned[ident] = None
        while len(self._banned) > _BANNED_MEMORY:
            self._banned.pop(next(iter(self._banned)))

    def _warn(self, text: str) -> None:
        print(f"segstream: {text}", file=sys.stderr)

    def _drop(self, ident: bytes, why: str) -> None:
        import zmq

        if self._recorders.pop(ident, None) is None:
            return
        self._ban(ident)
        self.stats["recorders"] -= 1
        self.stats["recorders_dropped"] += 1
        self._warn(f"recorder {ident.hex()} dropped from {self.spec}: {why}")
        # tell it, so a recorder that was merely slow knows its recording is incomplete
        end = encode_end_message(
            self.stream, self._last_seq, self.stats["published"], reason=f"dropped: {why}"
        )
        try:
            self._router.send_multipart([ident, *end], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _send_lossless(self, frames: list) -> None:
        import zmq

        self._pump(0)
        now = time.monotonic()
        for ident in list(self._recorders):
            rec = self._recorders.get(ident)
            if rec is None:
                continue
            if rec.credit <= 0 and self._live:
                # live source: waiting would make capture drop frames for everyone; this recorder
                # misses the mask instead (it sees the seq gap), and goes when it stays silent
                if now - rec.last_credit > self.lossless_timeout:
                    self._drop(ident, f"no credit for {self.lossless_timeout:g} s")
                else:
                    self.stats["lossless_missed"] += 1
                continue
            if rec.credit <= 0:
                # file source: backpressure, but bounded from when this wait began, so neither a
                # recorder that went quiet nor one that keeps talking without granting credit can
                # hold the pipeline longer than lossless_timeout
                t0 = time.monotonic()
                while ident in self._recorders and rec.credit <= 0:
                    if time.monotonic() - t0 > self.lossless_timeout:
                        self._drop(ident, f"granted no credit for {self.lossless_timeout:g} s")
                        break
                    self._pump(20)
                self.stats["lossless_wait_s"] += time.monotonic() - t0
                if ident not in self._recorders:
                    continue
            try:
                self._router.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._drop(ident, "stopped reading (its queue is full)")
                continue
            except zmq.ZMQError as e:  # EHOSTUNREACH: the recorder vanished without 'bye'
                if self._recorders.pop(ident, None) is not None:
                    self.stats["recorders"] -= 1
                    self.stats["recorders_dropped"] += 1
                    self._warn(f"recorder {ident.hex()} dropped from {self.spec}: {e.strerror}")
                continue
            rec.credit -= 1
            self.stats["lossless_sent"] += 1

    # ----------------------------------------------------------------------------------- write
    def _resized(self, mask, confidence, maps):
        """Class ids nearest (a pixel keeps a class the model gave), the 0-255 maps by area averaging."""
        import cv2

        near, area = cv2.INTER_NEAREST, cv2.INTER_AREA
        mask = cv2.resize(mask, self.size, interpolation=near)
        if confidence is not None:
            confidence = cv2.resize(confidence, self.size, interpolation=area)
        return mask, confidence, {k: cv2.resize(v, self.size, interpolation=area) for k, v in maps.items()}

    def write(self, result: Result) -> None:
        import zmq

        if self._pub is None:
            raise SinkError(f"{self.spec}: write() before open()")
        if result.classes is not None and result.classes is not self.classes:
            # the model was swapped: the digest in the headers changes from this frame on, and the
            # class-table port answers with the new table before any subscriber can ask for it
            self.classes = result.classes
            self._reply = encode_classes_reply(self.stream, self.classes)
        self._last_seq = result.seq
        if not self._listened_to():
            self.stats["published"] += 1
            self.stats["unsubscribed"] += 1
            return
        overlay_jpeg = None
        if self.overlay and result.overlay is not None:
            import cv2

            ok, buf = cv2.imencode(".jpg", result.overlay, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            overlay_jpeg = buf.tobytes() if ok else None
        mask = result.mask
        confidence = result.confidence if self.confidence else None
        maps = {m: result.maps[m] for m in self.maps if m in result.maps}
        if self.size is not None and mask.shape[::-1] != self.size:
            mask, confidence, maps = self._resized(mask, confidence, maps)
        depth = result.depth if self.depth else None
        if depth is not None and depth.shape != mask.shape:  # nearest: never a depth between two
            import cv2

            depth = cv2.resize(depth, mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        # copy: the stage may reuse the mask's buffer (shared-memory slot) once write() returns
        frames = encode_mask_message(
            stream=self.stream,
            seq=result.seq,
            frame_index=result.frame_index,
            mask=mask,
            classes=self.classes,
            timestamps=result.timestamps,
            drops=result.drops,
            source=result.source,
            infer_size=result.infer_size,
            encoding=self.encoding,
            confidence=confidence,
            confidence_encoding=self.confidence or "raw",
            overlay_jpeg=overlay_jpeg,
            segments=self.segments,
            maps=maps,
            maps_encoding=self.maps_encoding,
            depth=depth,
            depth_encoding=self.depth or "raw",
        )
        frames = [bytes(f) if isinstance(f, memoryview) else f for f in frames]
        try:
            self._pub.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # PUB drops at the HWM itself; Again only on exotic transports
        self.stats["published"] += 1
        if self._router is not None:
            self._send_lossless(frames)

    def _listened_to(self) -> bool:
        """Whether a subscriber or a recorder would get this mask (reads the pending subscriptions)."""
        import zmq

        for _ in range(_MAX_COMMANDS_PER_PUMP):  # a flood of subscriptions cannot hold the frame up
            try:
                event = self._pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            # b"\x01topic" subscribes, b"\x00topic" unsubscribes; anything else is no subscription
            if event[:1] == b"\x01":
                self._subscriptions += 1
            elif event[:1] == b"\x00":
                self._subscriptions = max(0, self._subscriptions - 1)
        if self._subscriptions > 0:
            return True
        if self._router is None:
            return False
        self._pump(0)
        return bool(self._recorders)

    # ----------------------------------------------------------------------------------- close
    def close(self) -> None:
        if self._ctx is None:
            return
        import zmq

        try:
            if self._pub is not None:
                end = encode_end_message(self.stream, self._last_seq, self.stats["published"])
                self._pub.send_multipart(end, flags=zmq.NOBLOCK)
                if self._router is not None:
                    self._pump(0)
                    for ident in list(self._recorders):
                        try:
                            self._router.send_multipart([ident, *end], flags=zmq.NOBLOCK)
                        except zmq.ZMQError:
                            pass
                    # let queued lossless messages reach the recorders before the socket goes
                    self._router.setsockopt(zmq.LINGER, int(self.lossless_timeout * 1000))
                self._pub.setsockopt(zmq.LINGER, 200)
        finally:
            self._stop.set()
            if self._rep_thread is not None:
                self._rep_thread.join(2)
            for s in (self._pub, self._router):
                if s is not None:
                    s.close()
            self._pub = self._router = None
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            self._ctx.term()
            self._ctx = None

    # ------------------------------------------------------------------------------- helpers
    @property
    def endpoints(self) -> Endpoints:
        return self.ep


def _credit(frames: list[bytes]) -> int | None:
    """N from ``[ident, "credit", "<N>"]`` with N a positive decimal (at most 9 digits); else None."""
    if len(frames) != 3 or frames[1] != b"credit":
        return None
    text = frames[2]
    if not (0 < len(text) <= 9 and text.isdigit()):
        return None
    n = int(text)
    return n if n > 0 else None
