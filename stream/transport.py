"""ZeroMQ endpoints as strings, socket options and high-water marks in one place.

An endpoint string says socket type, bind or connect, and address (Savant style)::

    push+bind:ipc:///tmp/segstream-1/frames
    pull+connect:tcp://gpu-host:5555

so any stage can be placed on another host by changing a string. A bare address
(``tcp://host:5555``) takes the socket type and direction the caller gives as defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.errors import SegstreamError

SOCKET_TYPES = ("push", "pull", "pub", "sub", "pair", "dealer", "router")
TRANSPORTS = ("ipc://", "tcp://", "inproc://")

# High-water marks (messages). Data sockets stay small: the shared-memory ring and the credits that
# flow back already bound what is in flight, so a deep ZeroMQ queue would only hide latency.
DATA_HWM = 64
CONTROL_HWM = 1000
LINGER_MS = 0  # never block process exit on unsent messages


class EndpointError(SegstreamError, ValueError):
    """An endpoint string is malformed."""


@dataclass(frozen=True)
class Endpoint:
    kind: str  # socket type: push, pull, pub, sub, ...
    bind: bool
    address: str  # tcp://host:port, ipc:///path, inproc://name

    def __str__(self) -> str:
        return f"{self.kind}+{'bind' if self.bind else 'connect'}:{self.address}"

    @property
    def is_tcp(self) -> bool:
        return self.address.startswith("tcp://")

    @property
    def is_local(self) -> bool:
        """True when the peer is certainly on this host (ipc/inproc): shared memory is usable."""
        return not self.is_tcp


def parse_endpoint(spec: str, kind: str | None = None, bind: bool | None = None) -> Endpoint:
    """Parse ``[type+bind|connect:]address``; ``kind``/``bind`` are defaults for a bare address."""
    spec = spec.strip()
    head, sep, rest = spec.partition(":")
    if sep and "+" in head and not head.startswith(("tcp", "ipc", "inproc")):
        typ, _, direction = head.partition("+")
        typ = typ.lower()
        if typ not in SOCKET_TYPES:
            raise EndpointError(
                f"endpoint {spec!r}: unknown socket type {typ!r} (one of {', '.join(SOCKET_TYPES)})"
            )
        if direction not in ("bind", "connect"):
            raise EndpointError(f"endpoint {spec!r}: expected 'bind' or 'connect', got {direction!r}")
        kind, bind, address = typ, direction == "bind", rest
    else:
        address = spec
    if kind is None or bind is None:
        raise EndpointError(
            f"endpoint {spec!r}: needs a socket type and direction, e.g. 'pull+connect:{address}'"
        )
    if not address.startswith(TRANSPORTS):
        raise EndpointError(f"endpoint {spec!r}: address must start with tcp://, ipc:// or inproc://")
    if address.startswith("tcp://") and ":" not in address[len("tcp://") :]:
        raise EndpointError(f"endpoint {spec!r}: tcp address needs a port (tcp://host:port)")
    return Endpoint(kind=kind, bind=bind, address=address)


def open_socket(ctx, endpoint: Endpoint | str, hwm: int = DATA_HWM, subscribe: bytes = b""):
    """Create, configure and bind/connect a socket for ``endpoint``."""
    import zmq

    ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
    sock = ctx.socket(getattr(zmq, ep.kind.upper()))
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if ep.kind == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    if ep.kind == "push":
        # a PUSH with no peer yet queues; IMMEDIATE makes it wait for a live peer instead of
        # parking messages on a dead connection (matters when an infer worker restarts)
        sock.setsockopt(zmq.IMMEDIATE, 1)
    try:
        if ep.bind:
            sock.bind(ep.address)
        else:
            sock.connect(ep.address)
    except zmq.ZMQError as e:
        sock.close(0)
        raise EndpointError(f"cannot {'bind' if ep.bind else 'connect'} {ep.address}: {e}") from None
    return sock


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (tests and benches)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
