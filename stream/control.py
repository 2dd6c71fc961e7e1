"""The control API of a running pipeline: add, remove and list streams while the run goes on.

``segstream run ... --control tcp://127.0.0.1:7000`` binds a ZeroMQ REP socket there; the supervisor
answers it from its own loop (no thread). One JSON request, one JSON reply::

    {"cmd": "list"}                                   -> {"ok": true, "streams": [{"id": "0", ...}]}
    {"cmd": "add", "stream": {"id": "cam2", "uri": "rtsp://...", "sinks": ["cam2.mp4"]}}
    {"cmd": "remove", "id": "cam2"}                   -> the stream is drained, its outputs finalized
    {"cmd": "model", "model": "/abs/new.onnx"}        -> answered once switched: {"seq": S, "streams": ...}
    (any request)                                     -> {"ok": false, "error": "one line"}

A request may carry ``"token"``: with ``--control-token FILE`` every request must, and the control port
may then be bound beyond loopback (without a token only loopback and ipc:// are allowed, unless
--insecure). Anything else that arrives (not JSON, unknown command, a stream table with a bad key) gets
an error reply naming it and changes nothing: the run never ends because of its control port.
``segstream streams add|remove|list --control ENDPOINT`` is the client.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.errors import SegstreamError

MAX_REQUEST = 64 * 1024  # bytes: a stream table is small; anything larger is not a request of ours
CLIENT_TIMEOUT_MS = 10_000


class ControlError(SegstreamError):
    """The control endpoint cannot be used (bad address, exposed without a token, no run answers)."""


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ControlError(f"--control-token {path}: cannot be read ({e.strerror or e})") from None
    if len(token) < 16:
        raise ControlError(f"--control-token {path}: the token must be at least 16 characters")
    return token


def check_endpoint(address: str, token: str | None, insecure: bool) -> str:
    """``tcp://HOST:PORT`` or ``ipc://PATH``; beyond loopback only with a token (or --insecure)."""
    from stream.exposure import is_loopback

    if address.startswith("ipc://") and len(address) > len("ipc://"):
        return address
    if not address.startswith("tcp://") or ":" not in address[len("tcp://") :]:
        raise ControlError(f"--control {address!r}: expected tcp://HOST:PORT or ipc://PATH")
    host = address[len("tcp://") :].rsplit(":", 1)[0]
    if not is_loopback(host) and token is None and not insecure:
        raise ControlError(
            f"--control {address}: binds beyond this host; give --control-token FILE (every request must "
            "carry the token) or --insecure"
        )
    return address


class Pending:
    """A reply that comes later (a model swap answers once it switched): the server reads no other request
    until it is set (REP answers in order), or it is answered with an error when the run ends first."""

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None

    def answer(self, reply: dict[str, Any]) -> None:
        self.reply = reply


class ControlServer:
    """The REP socket, polled by the supervisor's loop; ``handlers`` do the work (they may raise
    SegstreamError, whose message becomes the error reply)."""

    def __init__(self, address: str, handlers: dict[str, Callable[[dict[str, Any]], Any]], token: str | None):
        import zmq

        self.zmq = zmq
        self.handlers = handlers
        self.token = token
        self.requests = 0
        self.refused = 0
        self.pending: Pending | None = None
        self.sock = zmq.Context.instance().socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
        try:
            self.sock.bind(address)
        except zmq.ZMQError as e:
            self.sock.close(0)
            raise ControlError(f"--control {address}: cannot bind ({e})") from None

    def poll(self) -> None:
        """Answer every request already waiting (never blocks)."""
        while True:
            if self.pending is not None:
                if self.pending.reply is None:
                    return
                reply, self.pending = self.pending.reply, None
                self.send(reply)
            try:
                raw = self.sock.recv(self.zmq.NOBLOCK)
            except self.zmq.Again:
                return
            reply = self.answer(raw)
            if isinstance(reply, Pending):
                self.pending = reply
                continue
            self.send(reply)

    def send(self, reply: dict[str, Any]) -> None:
        try:
            self.sock.send(json.dumps(reply).encode(), self.zmq.NOBLOCK)
        except self.zmq.ZMQError:
            pass

    def answer(self, raw: bytes) -> dict[str, Any] | Pending:
        self.requests += 1
        try:
            req = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self.refuse("the request is not JSON")
        if not isinstance(req, dict):
            return self.refuse("the request is not a JSON object")
        if self.token is not None and not hmac.compare_digest(str(req.get("token", "")), self.token):
            return self.refuse("wrong or missing token")
        cmd = req.get("cmd")
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return self.refuse(f"unknown command {cmd!r} (one of {', '.join(sorted(self.handlers))})")
        try:
            out = handler(req)
        except SegstreamError as e:
            return self.refuse(str(e))
        if isinstance(out, Pending):
            return out
        return {"ok": True, **(out or {})}

    def refuse(self, why: str) -> dict[str, Any]:
        self.refused += 1
        return {"ok": False, "error": why}

    def close(self) -> None:
        if self.pending is not None:  # the client waits for an answer: the run ended before it came
            self.send(self.pending.reply or self.refuse("the run ended before the request was done"))
            self.pending = None
            self.sock.close(500)  # long enough for that last answer to leave
            return
        self.sock.close(0)


def request(
    address: str, req: dict[str, Any], token: str | None = None, timeout_ms: int = CLIENT_TIMEOUT_MS
) -> dict[str, Any]:
    """One request to a running pipeline's control endpoint; raises ControlError when nobody answers or
    the run refuses it."""
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
    except zmq.ZMQError as e:
        sock.close(0)
        raise ControlError(f"--control {address}: {e}") from None
    try:
        sock.send(json.dumps({**req, **({"token": token} if token else {})}).encode())
        if not sock.poll(timeout_ms):
            raise ControlError(
                f"no run answers on {address} within {timeout_ms / 1000:g} s (is `segstream run "
                f"--control {address}` running?)"
            )
        try:
            reply = json.loads(sock.recv())
        except ValueError:
            raise ControlError(f"{address} answered something that is not JSON") from None
    finally:
        sock.close(0)
    if not isinstance(reply, dict) or not reply.get("ok"):
        why = reply.get("error", "refused") if isinstance(reply, dict) else "refused"
        raise ControlError(str(why))
    return reply
