"""Receive segstream masks in Python::

    from stream.subscriber import subscribe
    for msg in subscribe("tcp://127.0.0.1:5555", count=100, timeout=5):
        print(msg.seq, msg.mask.shape, msg.classes.names[msg.mask[0, 0]])

Lossy by default (SUB on PORT: a slow subscriber misses messages and counts the seq gaps);
``lossless=True`` connects to the recorder endpoint (PORT+2) and grants credit, so the publisher
waits for it and nothing is lost. The class table is fetched from PORT+1 on the first message and
whenever the header's digest changes. Bad messages are skipped and counted, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engines.errors import SegstreamError
from engines.meta import ClassTable
from stream.messages import (
    CLASSES_REQUEST,
    MaskMessage,
    MessageError,
    decode_classes_reply,
    decode_mask_message,
    end_header,
    parse_endpoint,
)

log = logging.getLogger("segstream.subscriber")


class SubscribeError(SegstreamError):
    """The subscriber cannot connect securely (wrong server key, refused client key)."""


@dataclass
class SubscriberStats:
    received: int = 0
    bytes: int = 0
    gaps: int = 0  # messages missed, from seq jumps (lossy endpoint only, by design)
    restarts: int = 0  # seq went backwards: the publisher restarted
    skipped: dict[str, int] = field(default_factory=dict)  # malformed / truncated / version -> count
    classes_fetches: int = 0
    ended: bool = False  # the publisher sent its end-of-stream message


class Subscriber:
    def __init__(
        self,
        endpoint: str,
        *,
        lossless: bool = False,
        server_key: str | Path | None = None,
        client_key: str | Path | None = None,
        credit: int = 16,
        classes_timeout: float = 2.0,
        handshake_timeout: float = 0.0,
    ) -> None:
        import zmq

        self.ep = parse_endpoint(endpoint)
        if lossless and self.ep.lossless_port is None:
            raise SubscribeError(f"{endpoint}: lossless=off in the endpoint, cannot subscribe losslessly")
        self.lossless = lossless
        self.credit = max(1, credit)
        self.classes_timeout = classes_timeout
        self.stats = SubscriberStats()
        self._curve = self._load_curve(server_key, client_key)
        self._ctx = zmq.Context()
        self._last_seq: dict[str, int] = {}
        self._classes: ClassTable | None = None
        self._classes_retry_at = 0.0
        self._handshake_ok = False
        port = self.ep.lossless_port if lossless else self.ep.port
        self.address = self.ep.tcp(port)
        self._sock = self._socket(zmq.DEALER if lossless else zmq.SUB)
        self._monitor = self._sock.get_monitor_socket() if self._curve else None
        if not lossless:
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")
            # a slow reader should lose old masks, not lag behind: small queue, small kernel buffer
            self._sock.setsockopt(zmq.RCVHWM, 4)
            self._sock.setsockopt(zmq.RCVBUF, 1 << 19)
        self._sock.connect(self.address)
        if lossless:
            self._sock.send_multipart([b"credit", str(self.credit).encode()])
        if handshake_timeout and self._curve:
            self.wait_handshake(handshake_timeout)

    @staticmethod
    def _load_curve(server_key, client_key):
        if server_key is None:
            if client_key is not None:
                raise SubscribeError("--client-key needs --server-key (the publisher's public key)")
            return None
        import zmq

        from stream.keys import load_public, load_secret

        server_public = load_public(server_key)
        client = load_secret(client_key) if client_key is not None else zmq.curve_keypair()
        return server_public, client

    def _socket(self, kind: int):
        import zmq

        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve:
            server_public, (client_public, client_secret) = self._curve
            sock.curve_serverkey = server_public
            sock.curve_publickey = client_public
            sock.curve_secretkey = client_secret
        return sock

    # -------------------------------------------------------------------------------- security
    def _check_monitor(self) -> None:
        """Turn CURVE handshake failures into one clear error (ZeroMQ itself just retries silently)."""
        if self._monitor is None:
            return
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_ok = True
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise SubscribeError(
                    f"{self.address}: the publisher refused this client key "
                    "(its public key is not in the publisher's allowed-keys folder)"
                )
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                raise SubscribeError(
                    f"{self.address}: CURVE handshake failed: the --server-key does not match "
                    "the publisher's key (or the publisher does not use CURVE)"
                )

    def wait_handshake(self, timeout: float) -> bool:
        """With CURVE: wait until the handshake succeeded (True), failed (raises) or timed out (False)."""
        deadline = time.monotonic() + timeout
        while not self._handshake_ok and time.monotonic() < deadline:
            if self._monitor is None:
                return True
            self._monitor.poll(50)
            self._check_monitor()
        return self._handshake_ok

    # ---------------------------------------------------------------------------- class table
    def fetch_classes(self, timeout: float | None = None) -> ClassTable | None:
        """Ask the class-table endpoint; None (with a warning) when it does not answer in time."""
        import zmq

        req = self._socket(zmq.REQ)
        addr = self.ep.tcp(self.ep.classes_port)
        try:
            req.connect(addr)
            req.send(CLASSES_REQUEST)
            if not req.poll(int(1000 * (timeout or self.classes_timeout)), zmq.POLLIN):
                log.warning("class table: no answer from %s", addr)
                return None
            table = decode_classes_reply(req.recv())
        except MessageError as e:
            log.warning("class table from %s: %s", addr, e)
            return None
        finally:
            req.close(0)
        self.stats.classes_fetches += 1
        return table

    def _attach_classes(self, msg: MaskMessage) -> None:
        digest = msg.header["classes_digest"]
        if (
            self._classes is None or self._classes.digest() != digest
        ) and time.monotonic() >= self._classes_retry_at:
            table = self.fetch_classes()
            if table is None:
                self._classes_retry_at = (
                    time.monotonic() + 2.0
                )  # do not stall every message on a dead endpoint
            else:
                self._classes = table
        if self._classes is not None and self._classes.digest() == digest:
            msg.classes = self._classes

    # -------------------------------------------------------------------------------- receive
    def _skip(self, err: MessageError) -> None:
        n = self.stats.skipped.get(err.reason, 0) + 1
        self.stats.skipped[err.reason] = n
        if n <= 3 or n % 100 == 0:
            log.warning("skipped %s (%d %s so far)", err, n, err.reason)

    def recv(self, timeout: float | None = None) -> MaskMessage | None:
        """The next good message, or None on timeout / end of stream (see ``stats.ended``)."""
        import zmq

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_monitor()
            wait = 100 if deadline is None else max(0, min(100, int(1000 * (deadline - time.monotonic()))))
            if self._sock.poll(wait, zmq.POLLIN):
                frames = self._sock.recv_multipart(copy=True)
                received = time.time()
                if self.lossless:
                    self._sock.send_multipart([b"credit", b"1"])  # one in, one more allowed
                end = end_header(frames)
                if end is not None:
                    self._end(end)
                    return None
                try:
                    msg = decode_mask_message(frames)
                except MessageError as e:
                    self._skip(e)
                    continue
                msg.received = received
                self._count(msg)
                self._attach_classes(msg)
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                self._check_monitor()
                return None

    def _count(self, msg: MaskMessage) -> None:
        self.stats.received += 1
        self.stats.bytes += msg.size
        last = self._last_seq.get(msg.stream)
        if last is not None:
            if msg.seq > last + 1:
                self.stats.gaps += msg.seq - last - 1
            elif msg.seq <= last:
                self.stats.restarts += 1
        self._last_seq[msg.stream] = msg.seq

    def _end(self, end: dict) -> None:
        self.stats.ended = True
        last = self._last_seq.get(str(end.get("stream")))
        if last is not None and isinstance(end.get("last_seq"), int) and end["last_seq"] > last:
            self.stats.gaps += end["last_seq"] - last  # masks lost between our last one and the end
        self._last_seq.pop(str(end.get("stream")), None)  # a restarted publisher counts from anew

    def close(self) -> None:
        if self._ctx is None:
            return
        import zmq

        if self.lossless:
            try:
                self._sock.send_multipart([b"bye"], flags=zmq.NOBLOCK)
                self._sock.setsockopt(zmq.LINGER, 200)
            except zmq.ZMQError:
                pass
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(0)
        self._sock.close()
        self._ctx.term()
        self._ctx = None

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def subscribe(
    endpoint: str,
    *,
    count: int | None = None,
    timeout: float | None = None,
    stats: SubscriberStats | None = None,
    **options,
) -> Iterator[MaskMessage]:
    """Yield decoded masks until ``count`` messages, ``timeout`` seconds without one, or the
    publisher's end of stream. Options go to Subscriber (lossless, server_key, client_key, credit).
    Pass ``stats`` to read the counters (gaps, skipped) afterwards."""
    with Subscriber(endpoint, **options) as sub:
        if stats is not None:
            sub.stats = stats
        n = 0
        while count is None or n < count:
            msg = sub.recv(timeout)
            if msg is None:
                return
            n += 1
            yield msg
