"""CurveZMQ: keys from `segstream keys generate`; an allowed client receives masks; a client whose key is
not allowed receives nothing (and is told so); a wrong server key fails with one clear message."""

from __future__ import annotations

import time

import pytest
import zmq

from stream.keys import generate, load_public, load_secret
from stream.sinks.zmq_pub import ZmqPubSink
from stream.subscriber import SubscribeError, Subscriber

from .mask_helpers import Feeder, free_port_block, real_samples, segstream, stream_info


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    proc = segstream("keys", "generate", str(root / "server"), "--name", "server")
    assert proc.wait(60) == 0, proc.stderr.read()
    generate(root / "allowed", "recorder")  # the publisher's allow folder holds only public keys
    (root / "allowed" / "recorder.key_secret").rename(root / "recorder.key_secret")
    generate(root / "stranger", "stranger")
    return root


@pytest.fixture
def curve_stream(camvid, keys, capfd):
    classes, frames, masks = real_samples(camvid, 2)
    port = free_port_block()
    sink = ZmqPubSink(
        f"zmq-pub://0.0.0.0:{port}?curve_secret={keys / 'server/server.key_secret'}&allow={keys / 'allowed'}"
    )
    sink.open(stream_info(classes, frames[0]))
    assert "WARNING" not in capfd.readouterr().err  # all interfaces is fine with CURVE on
    with Feeder(sink, frames, masks, rate=50):
        yield port


def test_allowed_client_receives_masks(curve_stream, keys):
    proc = segstream(
        "subscribe",
        f"tcp://127.0.0.1:{curve_stream}",
        "--count",
        "5",
        "--timeout",
        "10",
        "--server-key",
        str(keys / "server/server.key"),
        "--client-key",
        str(keys / "recorder.key_secret"),
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len([ln for ln in out.splitlines() if ln.startswith("seq")]) == 5
    # the class table endpoint is behind CURVE too, and the allowed client got it
    with Subscriber(
        f"tcp://127.0.0.1:{curve_stream}",
        server_key=keys / "server/server.key",
        client_key=keys / "recorder.key_secret",
    ) as sub:
        msg = sub.recv(10)
        assert msg is not None and msg.classes is not None and msg.classes.num_classes == 11


def _raw_sub(port, server_key=None, client=None):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        s.curve_serverkey = server_key
        s.curve_publickey, s.curve_secretkey = client
    s.subscribe(b"")
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def test_client_without_an_allowed_key_receives_nothing(curve_stream, keys):
    server_key = load_public(keys / "server/server.key")
    stranger = _raw_sub(curve_stream, server_key, load_secret(keys / "stranger/stranger.key_secret"))
    plain = _raw_sub(curve_stream)  # no encryption at all
    allowed = _raw_sub(curve_stream, server_key, load_secret(keys / "recorder.key_secret"))
    try:
        deadline = time.monotonic() + 3.0
        received = {"stranger": 0, "plain": 0, "allowed": 0}
        while time.monotonic() < deadline:
            for name, s in (("stranger", stranger), ("plain", plain), ("allowed", allowed)):
                while s.poll(0):
                    s.recv_multipart()
                    received[name] += 1
            time.sleep(0.02)
        assert received["stranger"] == 0 and received["plain"] == 0
        assert received["allowed"] > 10  # same publisher, same 3 s: the stream was flowing
    finally:
        for s in (stranger, plain, allowed):
            s.close(0)
    # the subscriber API turns the refusal into one clear error instead of silence
    with (
        pytest.raises(SubscribeError, match="refused this client key"),
        Subscriber(
            f"tcp://127.0.0.1:{curve_stream}",
            server_key=keys / "server/server.key",
            client_key=keys / "stranger/stranger.key_secret",
        ) as sub,
    ):
        sub.recv(5)


def test_wrong_server_key_fails_with_a_clear_message(curve_stream, keys):
    proc = segstream(
        "subscribe",
        f"tcp://127.0.0.1:{curve_stream}",
        "--count",
        "1",
        "--timeout",
        "10",
        "--server-key",
        str(keys / "stranger/stranger.key"),
        "--client-key",
        str(keys / "recorder.key_secret"),
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "server-key does not match" in err and "Traceback" not in err
    assert not [ln for ln in out.splitlines() if ln.startswith("seq")]


def test_missing_key_file_is_one_line(curve_stream, tmp_path):
    proc = segstream(
        "subscribe", f"tcp://127.0.0.1:{curve_stream}", "--server-key", str(tmp_path / "nope.key")
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "key file not found" in err and "Traceback" not in err
