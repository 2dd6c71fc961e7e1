"""Receive segstream masks in Python::

    from stream.subscriber import subscribe
    for msg in subscribe("tcp://127.0.0.1:5555", count=100, timeout=5):
        print(msg.seq, msg.mask.shape, msg.classes.names[msg.mask[0, 0]])
        if msg.entropy is not None:  # publisher option ?maps=entropy,margin (else None)
            print("mean entropy", msg.entropy.mean() / 255, "unsure pixels", (msg.margin < 25).mean())
        if msg.depth is not None:  # RGB-D runs, publisher option ?depth=raw|png: uint16 mm, 0 = none
            print("median depth of class 0:", np.median(msg.depth[(msg.mask == 0) & (msg.depth > 0)]), "mm")

Lossy by default (SUB on PORT): the receive queue is small and each ``recv`` drains what queued
up while the caller was busy and returns the newest mask, so a slow reader stays current and counts
the masks it did not get as seq gaps, instead of falling seconds behind. ``lossless=True`` connects
to the recorder endpoint (PORT+2, opened by a publisher with ``lossless=on``) and grants credit.
The class table is fetched from PORT+1 on the first message and whenever the header's digest
changes. Every message is checked against ``stream.messages.Limits`` before it is decoded; bad ones
are skipped and counted by reason, never raised. With ``encoding=coco-rle`` or ``polygons`` the mask is
decoded from the segments document, which stays available as ``msg.segments`` (docs/PROTOCOL.md
section 4).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engines.errors import SegstreamError
from engines.meta import ClassTable
from stream.messages import (
    CLASSES_REQUEST,
    LIMITS,
    Limits,
    MaskMessage,
    MessageError,
    check_class_ids,
    check_message,
    decode_classes_reply,
    decode_mask_message,
    end_header,
    parse_endpoint,
)

log = logging.getLogger("segstream.subscriber")


class SubscribeError(SegstreamError):
    """The subscriber cannot connect securely (wrong server key, refused client key, CURVE needed)."""


# Lossy socket settings for live use (docs/PROTOCOL.md section 6): a few messages of ZeroMQ queue and
# a small kernel buffer, so what can pile up while the reader is busy stays small.
LIVE_RCVHWM = 4
LIVE_RCVBUF = 256 * 1024
_DRAIN_MAX = 10_000  # messages read in one drain, so a flood cannot keep recv() from returning


@dataclass
class SubscriberStats:
    received: int = 0
    bytes: int = 0
    gaps: int = 0  # masks missed between received ones, from seq jumps (lossy endpoint, by design)
    stale: int = 0  # of those, masks read but discarded to return the newest (lossy, conflate)
    missed_at_start: int = 0  # masks published before the first one received (its seq)
    restarts: int = 0  # seq went backwards: the publisher restarted
    skipped: dict[str, int] = field(default_factory=dict)  # malformed / truncated / version -> count
    other_streams: int = 0  # messages for streams other than the one asked for
    classes_fetches: int = 0
    ended: bool = False  # the publisher sent its end-of-stream message
    end_reason: str | None = None  # set when the publisher dropped this recorder


class Subscriber:
    """One connection to a mask stream. ``limits`` bound what a message may announce; ``conflate``
    (lossy only, default on) returns the newest queued mask and counts the older ones as gaps."""

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
        stream: str | None = None,
        conflate: bool = True,
        limits: Limits = LIMITS,
    ) -> None:
        import zmq

        self.ep = parse_endpoint(endpoint)
        if lossless and self.ep.lossless_port is None:
            raise SubscribeError(f"{endpoint}: lossless=off in the endpoint, cannot subscribe losslessly")
        if stream is not None and not stream:
            raise SubscribeError("stream id must not be empty")
        self.lossless = lossless
        self.credit = max(1, min(credit, 64))  # the publisher caps credit at 64 (MAX_CREDIT)
        self.classes_timeout = classes_timeout
        self.stream = stream
        self.conflate = conflate and not lossless
        self.limits = limits
        self.stats = SubscriberStats()
        self._curve = self._load_curve(server_key, client_key)
        self._ctx = zmq.Context()
        self._last_seq: dict[str, int] = {}
        self._classes: ClassTable | None = None
        self._classes_retry_at = 0.0
        self._handshake_ok = False
        self.connected = False  # a TCP connection to the publisher is up (from the socket monitor)
        self._pending: deque[list[bytes]] = deque()
        port = self.ep.lossless_port if lossless else self.ep.port
        self.address = self.ep.tcp(port)
        self._sock = self._socket(zmq.DEALER if lossless else zmq.SUB)
        # always monitored: connection state for "waiting for ...", handshake failures as errors
        self._monitor = self._sock.get_monitor_socket()
        if not lossless:
            # a topic is a prefix filter in ZeroMQ ("cam1" also matches "cam10"): exact match below
            self._sock.setsockopt(zmq.SUBSCRIBE, b"" if stream is None else stream.encode())
            self._sock.setsockopt(zmq.RCVHWM, LIVE_RCVHWM)
            self._sock.setsockopt(zmq.RCVBUF, LIVE_RCVBUF)
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
        # a peer sending a bigger frame than any valid message needs is disconnected by ZeroMQ
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)
        if self._curve:
            server_public, (client_public, client_secret) = self._curve
            sock.curve_serverkey = server_public
            sock.curve_publickey = client_public
            sock.curve_secretkey = client_secret
        return sock

    # -------------------------------------------------------------------------------- security
    def _check_monitor(self) -> None:
        """Track the connection; turn handshake failures into one clear error (ZeroMQ itself retries
        a failed handshake silently, forever)."""
        if self._monitor is None:
            return
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            report = recv_monitor_message(self._monitor)
            event = report["event"]
            if event == zmq.EVENT_CONNECTED:
                self.connected = True
            elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self.connected = False
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_ok = True
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise SubscribeError(
                    f"{self.address}: the publisher refused this client key "
                    "(its public key is not in the publisher's allowed-keys folder)"
                )
            elif self._curve and event in (
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            ):
                raise SubscribeError(
                    f"{self.address}: CURVE handshake failed: the --server-key does not match "
                    "the publisher's key (or the publisher does not use CURVE)"
                )
            elif (
                event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                and report.get("value") == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
            ):
                # without keys, only this one is certain: a publisher restarting mid-handshake
                # also fails a handshake, and must not end the subscription
                raise SubscribeError(
                    f"{self.address}: the publisher requires CURVE encryption "
                    "(pass --server-key and --client-key)"
                )

    def wait_handshake(self, timeout: float) -> bool:
        """With CURVE: wait until the handshake succeeded (True), failed (raises) or timed out (False)."""
        deadline = time.monotonic() + timeout
        while not self._handshake_ok and time.monotonic() < deadline:
            if not self._curve:
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
            table = decode_classes_reply(req.recv(), self.limits)
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
            if table is None or table.digest() != digest:
                # unreachable, or still not the header's table: masks go out without names for now;
                # retry later rather than stall every message on a dead or inconsistent endpoint
                self._classes_retry_at = time.monotonic() + 2.0
            if table is not None:
                self._classes = table
        if self._classes is not None and self._classes.digest() == digest:
            msg.classes = self._classes

    # -------------------------------------------------------------------------------- receive
    def _skip(self, err: MessageError) -> None:
        n = self.stats.skipped.get(err.reason, 0) + 1
        self.stats.skipped[err.reason] = n
        if n <= 3 or n % 100 == 0:
            log.warning("skipped %s (%d %s so far)", err, n, err.reason)

    def _next_frames(self, wait_ms: int) -> list[bytes] | None:
        """The next message to look at. Conflating, it reads everything already queued and keeps only
        the newest mask whose framing and header are valid: every older message is still checked
        (malformed ones are counted as skipped, valid ones as stale); end messages are kept, in order."""
        import zmq

        if self._pending:
            return self._pending.popleft()
        if not self._sock.poll(wait_ms, zmq.POLLIN):
            return None
        batch = [self._sock.recv_multipart(copy=True)]
        if self.conflate:
            while len(batch) < _DRAIN_MAX and self._sock.poll(0, zmq.POLLIN):
                batch.append(self._sock.recv_multipart(copy=True))
            kept: list[list[bytes] | None] = []
            newest = None  # index in kept of the newest valid mask so far
            for frames in batch:
                if end_header(frames) is not None or not self._wanted(frames):
                    kept.append(frames)
                    continue
                try:
                    check_message(frames, self.limits)
                except MessageError as e:
                    self._skip(e)
                    continue
                if newest is not None:
                    kept[newest] = None  # superseded: read, valid, but no longer the newest
                    self.stats.stale += 1
                newest = len(kept)
                kept.append(frames)
            batch = [f for f in kept if f is not None]
            if not batch:
                return None
        self._pending.extend(batch[1:])
        return batch[0]

    def _wanted(self, frames: list[bytes]) -> bool:
        return self.stream is None or bytes(frames[0]) == self.stream.encode()

    def recv(self, timeout: float | None = None) -> MaskMessage | None:
        """The next good message, or None on timeout / end of stream (see ``stats.ended``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_monitor()
            wait = 100 if deadline is None else max(0, min(100, int(1000 * (deadline - time.monotonic()))))
            frames = self._next_frames(wait)
            if frames is not None:
                received = time.time()
                if self.lossless:
                    self._sock.send_multipart([b"credit", b"1"])  # one in, one more allowed
                if not self._wanted(frames):
                    self.stats.other_streams += 1  # a longer topic with our id as its prefix
                    continue
                end = end_header(frames)
                if end is not None:
                    self._end(end)
                    return None
                try:
                    msg = decode_mask_message(frames, self.limits)
                    msg.received = received
                    self._attach_classes(msg)
                    if msg.classes is not None:
                        check_class_ids(msg, msg.classes)
                except MessageError as e:
                    self._skip(e)
                    continue
                self._count(msg)
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                self._check_monitor()
                return None

    def _count(self, msg: MaskMessage) -> None:
        self.stats.received += 1
        self.stats.bytes += msg.size
        last = self._last_seq.get(msg.stream)
        if last is None:
            if self.stats.received == 1:
                self.stats.missed_at_start = msg.seq  # seq counts from 0 when the publisher starts
        elif msg.seq > last + 1:
            self.stats.gaps += msg.seq - last - 1
        elif msg.seq <= last:
            self.stats.restarts += 1
        self._last_seq[msg.stream] = msg.seq

    def _end(self, end: dict) -> None:
        self.stats.ended = True
        reason = end.get("reason")
        self.stats.end_reason = reason if isinstance(reason, str) else None
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
    publisher's end of stream. Options go to Subscriber (lossless, server_key, client_key, credit,
    stream, conflate, limits). Pass ``stats`` to read the counters (gaps, skipped) afterwards."""
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
