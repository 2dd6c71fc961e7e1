"""Endpoint strings and real ZeroMQ sockets built from them."""

from __future__ import annotations

import pytest
import zmq

from stream.transport import DATA_HWM, LINGER_MS, EndpointError, free_tcp_port, open_socket, parse_endpoint


def test_parse_full_and_bare_forms():
    ep = parse_endpoint("push+bind:ipc:///tmp/x")
    assert (ep.kind, ep.bind, ep.address, ep.is_local) == ("push", True, "ipc:///tmp/x", True)
    ep = parse_endpoint("pull+connect:tcp://host:5555")
    assert (ep.kind, ep.bind, ep.is_tcp) == ("pull", False, True)
    assert str(ep) == "pull+connect:tcp://host:5555"
    bare = parse_endpoint("tcp://h:1", "pull", False)
    assert (bare.kind, bare.bind) == ("pull", False)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("shove+bind:tcp://h:1", "unknown socket type 'shove'"),
        ("push+attach:tcp://h:1", "'bind' or 'connect'"),
        ("push+bind:http://h:1", "must start with"),
        ("push+bind:tcp://host", "needs a port"),
        ("tcp://h:1", "needs a socket type"),
    ],
)
def test_bad_endpoints_name_the_problem(spec, match):
    with pytest.raises(EndpointError, match=match):
        parse_endpoint(spec)


def test_sockets_from_strings_talk_over_tcp_and_ipc(tmp_path):
    ctx = zmq.Context()
    try:
        port = free_tcp_port()
        for pair in (
            (f"push+bind:tcp://127.0.0.1:{port}", f"pull+connect:tcp://127.0.0.1:{port}"),
            (f"pull+bind:ipc://{tmp_path}/s", f"push+connect:ipc://{tmp_path}/s"),
        ):
            a, b = (open_socket(ctx, e) for e in pair)
            tx, rx = (a, b) if a.type == zmq.PUSH else (b, a)
            assert tx.getsockopt(zmq.LINGER) == LINGER_MS and tx.getsockopt(zmq.SNDHWM) == DATA_HWM
            tx.send_multipart([b"hdr", b"x" * 1000])
            assert rx.poll(5000)
            assert rx.recv_multipart() == [b"hdr", b"x" * 1000]
            a.close()
            b.close()
    finally:
        ctx.term()


def test_bind_conflict_is_a_clear_error():
    ctx = zmq.Context()
    port = free_tcp_port()
    s = open_socket(ctx, f"pull+bind:tcp://127.0.0.1:{port}")
    try:
        with pytest.raises(EndpointError, match=f"cannot bind tcp://127.0.0.1:{port}"):
            open_socket(ctx, f"pull+bind:tcp://127.0.0.1:{port}")
    finally:
        s.close()
        ctx.term()
