"""``mqtt://HOST:PORT/TOPIC?what=stats,polygons&qos=0|1``: per-frame results to an MQTT broker (paho-mqtt).

Each frame becomes one JSON message on TOPIC (``{stream}`` in it is replaced by the stream id; default
``segstream/{stream}``)::

    {"stream": "0", "seq": 41, "frame_index": 41, "width": 480, "height": 360,
     "timestamps": {"capture": ..., "infer": ..., "publish": ...}, "latency_ms": 31.2,
     "classes": [{"id": 0, "name": "Sky", "area": 41234, "fraction": 0.2386, "components": 2}, ...],
     "drops": {"capture": 0}, "mqtt": {"dropped": 0, "outages": 0, "outage_s": 0.0, ...},
     "segments": {...}}                                    # with what=polygons or what=coco-rle

``segments`` is the document of docs/PROTOCOL.md section 4 (stream/maskcodec/segments.py).

Never blocks the pipeline: write() copies the mask into a bounded queue (the oldest frame is dropped and
counted when it is full) and returns; a sender thread builds the message and hands it to paho, whose
network thread reconnects with exponential backoff (``backoff_min``..``backoff_max`` seconds). While the
broker is down or has not taken the previous ``queue`` messages yet (a slow broker), frames are dropped
and counted, never queued without bound. Outages are counted and timed, and the counters travel in
every message (``mqtt``), so a consumer sees what it missed.

Options: what=stats[,polygons|coco-rle], qos=0|1, tolerance=PIXELS (polygons, default 1),
components=0|1 (segments per connected region), queue=N (16), client_id=ID, keepalive=S (30),
username=U, password=P | password_env=VAR | password_file=FILE (the password is never printed),
tls=1 (or the scheme mqtts://, default port 8883), ca=FILE, cert=FILE, key=FILE, tls_insecure=1
(skip the host-name check), connect_timeout=S (5), backoff_min=S (0.5), backoff_max=S (5).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np

from stream.sinks.base import Result, Sink, SinkError, StreamInfo
from stream.uri import Options

WHAT = ("stats", "polygons", "coco-rle")
_KNOWN = {
    "what",
    "qos",
    "tolerance",
    "components",
    "queue",
    "client_id",
    "keepalive",
    "username",
    "password",
    "password_env",
    "password_file",
    "tls",
    "ca",
    "cert",
    "key",
    "tls_insecure",
    "connect_timeout",
    "backoff_min",
    "backoff_max",
}
_SECRET = ("password",)


def redact(spec: str) -> str:
    """The spec with any password value replaced, fit to print."""
    base, sep, query = spec.partition("?")
    if not sep:
        return spec
    pairs = [(k, "***" if k in _SECRET else v) for k, v in parse_qsl(query, keep_blank_values=True)]
    return base + "?" + "&".join(f"{k}={quote(v, safe='*,/:{}')}" for k, v in pairs)


class MqttSink(Sink):
    wants_overlay = False

    def __init__(self, spec: str) -> None:
        self.spec = redact(spec)
        u = urlsplit(spec.strip())
        if u.scheme not in ("mqtt", "mqtts"):
            raise SinkError(f"{self.spec}: expected mqtt://HOST:PORT/TOPIC or mqtts://...")
        opts = dict(parse_qsl(u.query, keep_blank_values=True))
        o = Options(self.spec, opts, error=SinkError)  # typed getters; errors name the key and value
        unknown = sorted(set(opts) - _KNOWN)
        if unknown:
            raise SinkError(
                f"{self.spec}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})"
            )
        self.host = u.hostname or ""
        if not self.host:
            raise SinkError(f"{self.spec}: no broker host (expected mqtt://HOST:PORT/TOPIC)")
        self.tls = u.scheme == "mqtts" or o.bool("tls", False)
        try:
            self.port = u.port or (8883 if self.tls else 1883)
        except ValueError:
            raise SinkError(f"{self.spec}: the port is not a number 1..65535") from None
        self.topic = unquote(u.path.lstrip("/")) or "segstream/{stream}"
        if any(c in self.topic for c in "+#") or "\x00" in self.topic or "#" in spec.partition("?")[0]:
            raise SinkError(f"{self.spec}: topic {self.topic!r} may not contain + or # (wildcards)")
        self.what = [w.strip() for w in opts.get("what", "stats").split(",") if w.strip()]
        bad = [w for w in self.what if w not in WHAT]
        if bad or not self.what:
            raise SinkError(f"{self.spec}: what={opts.get('what')!r}: expected some of {', '.join(WHAT)}")
        if "polygons" in self.what and "coco-rle" in self.what:
            raise SinkError(f"{self.spec}: what= takes polygons or coco-rle, not both")
        self.segments_format = next((w for w in self.what if w != "stats"), None)
        self.qos = o.int("qos", 0)
        if self.qos not in (0, 1):
            raise SinkError(f"{self.spec}: qos={opts['qos']!r} (expected 0 or 1)")
        self.queue_size = o.int("queue", 16)
        self.keepalive = o.int("keepalive", 30)
        self.tolerance = o.float("tolerance", 1.0)
        self.components = o.bool("components", False)
        self.connect_timeout = o.float("connect_timeout", 5.0)
        self.backoff = (o.float("backoff_min", 0.5), o.float("backoff_max", 5.0))
        if self.queue_size < 1 or self.keepalive < 5 or not 0 <= self.tolerance <= 100:
            raise SinkError(f"{self.spec}: queue >= 1, keepalive >= 5 and tolerance 0..100 expected")
        if not 0 < self.backoff[0] <= self.backoff[1] or self.connect_timeout <= 0:
            raise SinkError(f"{self.spec}: 0 < backoff_min <= backoff_max and connect_timeout > 0 expected")
        self.client_id = (
            opts.get("client_id") or f"segstream-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        )
        self.username = opts.get("username")
        self._password_opts = {k: opts[k] for k in ("password", "password_env", "password_file") if k in opts}
        if len(self._password_opts) > 1:
            raise SinkError(f"{self.spec}: give one of password, password_env, password_file")
        if self._password_opts and not self.username:
            raise SinkError(f"{self.spec}: a password needs username=")
        self.tls_files = {k: opts[k] for k in ("ca", "cert", "key") if opts.get(k)}
        if self.tls_files and not self.tls:
            raise SinkError(f"{self.spec}: ca/cert/key need TLS (tls=1 or mqtts://)")
        if ("cert" in self.tls_files) != ("key" in self.tls_files):
            raise SinkError(f"{self.spec}: a client certificate needs both cert= and key=")
        self.tls_insecure = o.bool("tls_insecure", False)
        self.stats: dict[str, Any] = {
            "published": 0,  # handed to the broker's connection (qos 0) or acknowledged by it (qos 1)
            "dropped": 0,  # frames not sent, any reason (the sum of the three below)
            "dropped_queue": 0,  # the sender thread was behind: oldest frame dropped
            "dropped_offline": 0,  # no broker connection at the time
            "dropped_backlog": 0,  # the broker had not taken the previous `queue` messages (slow broker)
            "outages": 0,  # connections lost after the first connect
            "outage_s": 0.0,  # total time without a connection, after the first connect
            "reconnects": 0,
            "connect_failures": 0,
        }
        self._client = None
        self._q: queue.Queue = queue.Queue(self.queue_size)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._down_since: float | None = None
        self._ever_connected = False
        self._inflight = 0
        self._lock = threading.Lock()

    def _password(self) -> str | None:
        o = self._password_opts
        if "password" in o:
            return o["password"]
        if "password_env" in o:
            value = os.environ.get(o["password_env"])
            if value is None:
                raise SinkError(f"{self.spec}: environment variable {o['password_env']} is not set")
            return value
        if "password_file" in o:
            try:
                return Path(o["password_file"]).read_text().rstrip("\r\n")
            except OSError as e:
                raise SinkError(
                    f"{self.spec}: cannot read password_file {o['password_file']} ({e.strerror})"
                ) from None
        return None

    # ------------------------------------------------------------------------------ preflight
    def preflight(self) -> None:
        """Before any stage starts: files readable, the password there, the broker reachable."""
        for k, path in self.tls_files.items():
            if not Path(path).is_file():
                raise SinkError(f"{self.spec}: {k}={path} is not a readable file")
        self._password()
        try:
            with socket.create_connection((self.host, self.port), timeout=min(self.connect_timeout, 3.0)):
                pass
        except socket.gaierror as e:
            raise SinkError(f"{self.spec}: cannot resolve broker host {self.host!r} ({e.strerror})") from None
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise SinkError(f"{self.spec}: no MQTT broker at {self.host}:{self.port} ({why})") from None

    # ------------------------------------------------------------------------------ open
    def warm(self) -> None:
        from stream.maskcodec import segments

        for fmt in ("polygons", "coco-rle"):
            if fmt in self.what:
                segments.warm(fmt)

    def open(self, info: StreamInfo) -> None:
        import paho.mqtt.client as mqtt

        self.info = info
        self.classes = info.classes
        self._topic = self.topic.replace("{stream}", info.stream_id)
        self.warm()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311
        )
        if self.username:
            client.username_pw_set(self.username, self._password())
        if self.tls:
            try:
                client.tls_set(
                    ca_certs=self.tls_files.get("ca"),
                    certfile=self.tls_files.get("cert"),
                    keyfile=self.tls_files.get("key"),
                )
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise SinkError(f"{self.spec}: TLS set-up failed ({e})") from None
            client.tls_insecure_set(self.tls_insecure)
        client.reconnect_delay_set(min_delay=self.backoff[0], max_delay=self.backoff[1])  # type: ignore[arg-type]
        client.max_queued_messages_set(self.queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(self.host, self.port, keepalive=self.keepalive)
        client.loop_start()  # paho's network thread: I/O, keepalive and reconnects with backoff
        if not self._connected.wait(self.connect_timeout) or self._refused:
            why = self._refused or f"no answer within {self.connect_timeout:g} s"
            self._shutdown()
            verb = "refused the connection" if self._refused else "did not accept a connection"
            raise SinkError(f"{self.spec}: the broker at {self.host}:{self.port} {verb}: {why}")
        self._thread = threading.Thread(target=self._sender, daemon=True, name="segstream-mqtt")
        self._thread.start()

    # paho callbacks (its network thread) -------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.stats["connect_failures"] += 1
            # a refusal retrying cannot fix (credentials, protocol, client id), unless the broker is
            # merely unavailable for now
            if not self._ever_connected and "unavailable" not in str(reason_code).lower():
                self._refused = str(reason_code)
                self._connected.set()  # wakes open(), which reports the refusal
            return
        now = time.monotonic()
        with self._lock:
            if self._down_since is not None:
                self.stats["outage_s"] += now - self._down_since
                self._down_since = None
                self.stats["reconnects"] += 1
            self._ever_connected = True
            self._inflight = 0  # what was in flight on the old connection is gone (qos 0) or resent
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            if self._ever_connected and self._down_since is None and not self._stop.is_set():
                self._down_since = time.monotonic()
                self.stats["outages"] += 1
        self._connected.clear()

    def _on_connect_fail(self, client, userdata) -> None:
        self.stats["connect_failures"] += 1

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self._inflight = max(0, self._inflight - 1)
            self.stats["published"] += 1

    # ------------------------------------------------------------------------------ write
    def write(self, result: Result) -> None:
        if self._client is None:
            raise SinkError(f"{self.spec}: write() before open()")
        item = (
            result.seq,
            result.frame_index,
            result.mask.copy(),
            dict(result.timestamps),
            dict(result.drops),
        )
        while True:
            try:
                self._q.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()  # the oldest goes: a consumer wants the newest
                    self._count("dropped_queue")
                except queue.Empty:
                    pass

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1
            self.stats["dropped"] += 1

    def _sender(self) -> None:
        while not self._stop.is_set() or not self._q.empty():
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if not self._client.is_connected():
                self._count("dropped_offline")
                continue
            with self._lock:
                backlog = self._inflight >= self.queue_size
            if backlog:
                self._count("dropped_backlog")
                continue
            payload = json.dumps(self.message(*item), separators=(",", ":")).encode()
            with self._lock:
                self._inflight += 1
            info = self._client.publish(self._topic, payload, qos=self.qos)
            if info.rc != 0:  # not connected any more, or paho's own queue is full
                with self._lock:
                    self._inflight = max(0, self._inflight - 1)
                self._count("dropped_offline" if not self._client.is_connected() else "dropped_backlog")

    def message(self, seq: int, index: int, mask: np.ndarray, ts: dict, drops: dict) -> dict[str, Any]:
        """The JSON message of one frame (built in the sender thread, never in the pipeline's)."""
        import cv2

        h, w = mask.shape
        hist = np.bincount(mask.reshape(-1), minlength=256)
        names = self.classes.names
        rows = []
        for c in np.flatnonzero(hist).tolist():
            n, _ = cv2.connectedComponents((mask == c).view(np.uint8), connectivity=8)
            rows.append(
                {
                    "id": c,
                    "name": names[c]
                    if c < len(names)
                    else ("ignore" if c == self.classes.ignore_index else str(c)),
                    "area": int(hist[c]),
                    "fraction": round(float(hist[c]) / mask.size, 5),
                    "components": n - 1,
                }
            )
        now = time.time()
        cap = ts.get("capture")
        with self._lock:
            counters = dict(self.stats)
            if self._down_since is not None:
                counters["outage_s"] += time.monotonic() - self._down_since
        counters["outage_s"] = round(counters["outage_s"], 3)
        msg: dict[str, Any] = {
            "stream": self.info.stream_id,
            "seq": int(seq),
            "frame_index": int(index),
            "width": w,
            "height": h,
            "timestamps": {**{k: float(v) for k, v in ts.items() if v is not None}, "publish": now},
            "latency_ms": None if cap is None else round(1000 * (now - float(cap)), 2),
            "classes": rows,
            "drops": {str(k): int(v) for k, v in drops.items()},
            "mqtt": counters,
        }
        if self.segments_format is not None:
            from stream.maskcodec import segments

            opts: dict[str, Any] = {"components": self.components}
            if self.segments_format == "polygons":
                opts["tolerance"] = self.tolerance
                if self.classes.ignore_index is not None:
                    opts.update(fill=self.classes.ignore_index, skip=(self.classes.ignore_index,))
            msg["segments"] = segments.encode(mask, self.segments_format, **opts)
        return msg

    # ------------------------------------------------------------------------------ close
    def close(self) -> None:
        if self._client is None:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)  # sends what is queued while connected; drops (counted) otherwise
        deadline = time.monotonic() + 2.0
        while self._inflight and self._client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)  # let paho write what it holds before the connection goes
        self._shutdown()
        if self.stats["dropped"] or self.stats["outages"]:
            print(
                f"segstream: {self.spec}: {self.stats['published']} messages sent, {self.stats['dropped']} "
                f"frames dropped, {self.stats['outages']} broker outage(s) ({self.stats['outage_s']:.1f} s)",
                file=sys.stderr,
            )

    def _shutdown(self) -> None:
        self._stop.set()
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()
