"""``http://HOST:PORT``: a live view in the browser — the overlay as MJPEG, the class legend, and
per-stage fps / latency / drops polled from ``/stats.json``.

The pipeline thread only swaps a reference into a "latest frame" slot; one encoder thread makes
the JPEG (once per frame, at most ``fps`` times a second, only while someone watches) and every
viewer thread sends the newest JPEG it has not sent yet. A stalled or vanished viewer therefore
costs the pipeline nothing: it just skips frames, and its thread ends on a send timeout.

WebRTC beside it (stream/webrtc.py, aiortc): ``/webrtc.html`` plays the overlay as a VP8 video track with
per-frame stats on a data channel, signalled by ``POST /webrtc/offer`` on this same server (so it is as
exposed as the MJPEG view: 127.0.0.1 unless HOST says otherwise), with a zero playout delay so the
browser shows each frame as soon as it is decoded. Each MJPEG part carries
``X-Segstream-Seq`` and ``X-Segstream-Capture`` headers, so a client can measure its latency too.

Options: ``?fps=15`` (most frames per second, JPEG and WebRTC), ``quality=80`` (JPEG quality),
``webrtc=1|0`` (default on when aiortc is installed), ``webrtc_peers=4`` (most WebRTC viewers: each
has its own video encoder). Port 0 picks a free port (see ``.url`` after open()).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from stream.pacing import Pacer
from stream.sinks.base import Result, Sink, SinkError, StreamInfo

BOUNDARY = "segstreamframe"
WATCH_GRACE_S = 5.0  # keep encoding this long after the last viewer request


class HttpViewSink(Sink):
    wants_overlay = True

    def __init__(self, spec: str) -> None:
        self.spec = spec
        u = urlsplit(spec)
        if u.scheme != "http":
            raise SinkError(f"{spec}: expected http://HOST:PORT")
        try:
            self.host = u.hostname or "127.0.0.1"
            self.req_port = 8080 if u.port is None else u.port
            opts = dict(parse_qsl(u.query))
            self.max_fps = float(opts.pop("fps", 15))
            self.quality = int(opts.pop("quality", 80))
            self.webrtc_peers = int(opts.pop("webrtc_peers", 4))
            webrtc = opts.pop("webrtc", "1").lower()
        except ValueError as e:
            raise SinkError(f"{spec}: {e}") from None
        if opts:
            raise SinkError(
                f"{spec}: unknown option(s) {sorted(opts)} (known: fps, quality, webrtc, webrtc_peers)"
            )
        if webrtc not in ("0", "1", "on", "off", "true", "false", "yes", "no") or self.webrtc_peers < 1:
            raise SinkError(f"{spec}: webrtc must be 1 or 0 and webrtc_peers >= 1")
        self.webrtc_wanted = webrtc in ("1", "on", "true", "yes")
        self.webrtc = None  # stream.webrtc.WebRtcServer once open
        self.webrtc_off = "off (webrtc=0)"  # why there is no WebRTC, for the page and stats.json
        if self.max_fps <= 0 or not 1 <= self.quality <= 100:
            raise SinkError(f"{spec}: fps must be > 0 and quality 1-100")
        self._cond = threading.Condition()
        self._latest: tuple[Any, int] | None = None  # (image, frame number) waiting for the encoder
        self._latest_info: dict[str, Any] = {}  # seq, capture time, ... of the frame in _latest
        self._jpeg: tuple[bytes, int] | None = None  # newest encoded JPEG and its frame number
        self._jpeg_info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._viewers = 0
        self._last_watch = 0.0
        self._frames = 0
        self._times: deque[float] = deque(maxlen=120)
        self._status: dict[str, Any] = {}
        self.encoded = 0
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------------------ lifecycle
    def open(self, info: StreamInfo) -> None:
        self.info = info
        self._legend = json.dumps(
            {
                "stream": info.stream_id,
                "ignore_index": info.classes.ignore_index,
                "classes": [
                    {"id": i, "name": n, "rgb": list(c)}
                    for i, (n, c) in enumerate(zip(info.classes.names, info.classes.palette, strict=True))
                ],
            }
        ).encode()
        self._page = resources.files("stream").joinpath("static/view.html").read_bytes()
        self._webrtc_page = resources.files("stream").joinpath("static/webrtc.html").read_bytes()
        handler = type("Handler", (_Handler,), {"sink": self})
        try:
            self._server = ThreadingHTTPServer((self.host, self.req_port), handler)
        except OSError as e:
            raise SinkError(
                f"{self.spec}: cannot listen on {self.host}:{self.req_port}: {e.strerror}"
            ) from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{self.host}:{self.port}/"
        if self.host in ("0.0.0.0", "", "::"):
            print(
                f"segstream: WARNING: live view {self.spec} is reachable from the network without a password",
                file=sys.stderr,
            )
        threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            daemon=True,
            name="segstream-http",
        ).start()
        threading.Thread(target=self._encode_loop, daemon=True, name="segstream-jpeg").start()
        if self.webrtc_wanted:
            from stream import webrtc

            self.webrtc_off = webrtc.available()
            if self.webrtc_off is None:
                self.webrtc = webrtc.WebRtcServer(
                    self._webrtc_latest, max_fps=self.max_fps, max_peers=self.webrtc_peers
                )
                self.webrtc.start()
        extra = f", WebRTC at {self.url}webrtc.html" if self.webrtc is not None else ""
        print(f"segstream: live view at {self.url}{extra}", file=sys.stderr)

    def write(self, result: Result) -> None:
        now = time.time()
        image = result.overlay if result.overlay is not None else result.frame
        self._frames += 1
        self._times.append(now)
        cap = result.timestamps.get("capture")
        self._status = {
            "seq": result.seq,
            "frame_index": result.frame_index,
            "latency_ms": None if cap is None else round(1000 * (now - cap), 1),
            "drops": dict(result.drops),
            "source": dict(result.source),
            "infer_size": list(result.infer_size) if result.infer_size else None,
            "stages": result.stats or {},
            "timestamps": dict(result.timestamps),
        }
        info = {
            "seq": result.seq,
            "frame_index": result.frame_index,
            "capture": cap,
            "drops": self._status["drops"],
        }
        with self._cond:
            self._latest = (image, self._frames)
            self._latest_info = info
            self._cond.notify_all()
        if self.webrtc is not None:
            self.webrtc.notify()

    def _webrtc_latest(self) -> tuple[Any, int, dict[str, Any]] | None:
        with self._cond:
            latest, info = self._latest, self._latest_info
        if latest is None:
            return None
        self._last_watch = time.monotonic()
        return latest[0], latest[1], {**info, "fps": self._fps()}

    def close(self) -> None:
        self._stop.set()
        if self.webrtc is not None:
            self.webrtc.close()
            self.webrtc = None
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------------------- encoder
    def _watched(self) -> bool:
        return self._viewers > 0 or time.monotonic() - self._last_watch < WATCH_GRACE_S

    def _encode_loop(self) -> None:
        import cv2

        last_frame = 0
        pacer = Pacer(self.max_fps)  # the same cap as each WebRTC peer's, jitter let through
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(
                    lambda seen=last_frame: (
                        self._stop.is_set() or (self._latest is not None and self._latest[1] != seen)
                    ),
                    0.5,
                )
                latest = self._latest
            if self._stop.is_set() or latest is None or latest[1] == last_frame:
                continue
            if not self._watched():
                last_frame = latest[1]  # nobody watches: skip it without encoding
                continue
            wait = pacer.wait_s()
            if wait > 0:
                self._stop.wait(wait)
                continue  # take the newest frame after the pause, not this one
            pacer.take()
            image, number = latest
            with self._cond:
                info = self._latest_info if self._latest is latest else {}
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            last_frame = number
            if ok:
                with self._cond:
                    self._jpeg = (buf.tobytes(), number)
                    self._jpeg_info = info
                    self.encoded += 1
                    self._cond.notify_all()

    def next_jpeg(self, after: int, timeout: float) -> tuple[bytes, int] | None:
        """The newest JPEG newer than frame ``after`` (waits up to ``timeout``)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._stop.is_set() or (self._jpeg is not None and self._jpeg[1] > after), timeout
            )
            jpeg = self._jpeg
        return jpeg if jpeg is not None and jpeg[1] > after else None

    def _fps(self) -> float:
        times = list(self._times)
        recent = [t for t in times if t > time.time() - 2.0]
        return (
            (len(recent) - 1) / (recent[-1] - recent[0])
            if len(recent) > 1 and recent[-1] > recent[0]
            else 0.0
        )

    def stats_json(self) -> bytes:
        fps = self._fps()
        rtc = self.webrtc
        doc = {
            "stream": self.info.stream_id,
            "frames": self._frames,
            "fps": round(fps, 2),
            "viewers": self._viewers,
            "jpeg_encoded": self.encoded,
            "webrtc": (
                {
                    "peers": len(rtc.peers),
                    "frames_sent": rtc.frames_sent,
                    "codec": rtc.codec,
                    "low_latency_peers": rtc.low_latency_peers,
                    "low_latency_off": rtc.low_latency_off,
                    "encoder_off": rtc.encoder_off,
                }
                if rtc is not None
                else {"off": self.webrtc_off}
            ),
            **self._status,
        }
        return json.dumps(doc, default=str).encode()


class _Handler(BaseHTTPRequestHandler):
    sink: HttpViewSink
    protocol_version = "HTTP/1.1"
    timeout = 10  # a viewer that stops reading is dropped after this many seconds

    def log_message(self, format: str, *args) -> None:  # quiet: the terminal belongs to the pipeline
        pass

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        sink = self.sink
        path = urlsplit(self.path).path
        sink._last_watch = time.monotonic()
        try:
            if path in ("/", "/index.html"):
                self._send(sink._page, "text/html; charset=utf-8")
            elif path == "/stats.json":
                self._send(sink.stats_json(), "application/json")
            elif path == "/classes.json":
                self._send(sink._legend, "application/json")
            elif path == "/frame.jpg":
                jpeg = sink.next_jpeg(0, 3.0)
                if jpeg is None:
                    self._send(b"no frame yet", "text/plain", 503)
                else:
                    self._send(jpeg[0], "image/jpeg")
            elif path == "/stream.mjpg":
                self._mjpeg()
            elif path in ("/webrtc", "/webrtc.html"):
                self._send(sink._webrtc_page, "text/html; charset=utf-8")
            else:
                self._send(b"not found", "text/plain", 404)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the viewer went away; nothing else waits on it

    def do_POST(self) -> None:
        sink = self.sink
        if urlsplit(self.path).path != "/webrtc/offer":
            self._send(b"not found", "text/plain", 404)
            return
        from stream.webrtc import WebRtcError

        try:
            length = int(self.headers.get("Content-Length") or -1)
            if not 0 < length <= 65536:
                raise WebRtcError(
                    413 if length > 0 else 411, "an offer needs a Content-Length of 1..65536 bytes"
                )
            body = self.rfile.read(length)
            if sink.webrtc is None:
                raise WebRtcError(501, f"WebRTC is off: {sink.webrtc_off}")
            try:
                offer = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise WebRtcError(400, "the offer is not JSON") from None
            sink._last_watch = time.monotonic()
            self._send(json.dumps(sink.webrtc.answer(offer)).encode(), "application/json")
        except WebRtcError as e:
            self._send(json.dumps({"error": str(e)}).encode(), "application/json", e.status)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass

    def _mjpeg(self) -> None:
        sink = self.sink
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with sink._cond:
            sink._viewers += 1
        try:
            sent = 0
            while not sink._stop.is_set():
                jpeg = sink.next_jpeg(sent, 1.0)
                sink._last_watch = time.monotonic()
                if jpeg is None:
                    continue
                data, sent = jpeg
                with sink._cond:
                    info = sink._jpeg_info if sink._jpeg is not None and sink._jpeg[1] == sent else {}
                # seq and capture time per part: a client can measure this view's latency
                extra = "".join(
                    f"X-Segstream-{k.capitalize()}: {info[k]}\r\n"
                    for k in ("seq", "capture")
                    if info.get(k) is not None
                )
                head = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
                )
                self.wfile.write(head.encode() + data + b"\r\n")
                self.wfile.flush()
        finally:
            with sink._cond:
                sink._viewers -= 1
