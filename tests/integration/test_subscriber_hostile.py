"""`segstream subscribe` and stream.subscriber against a hostile publisher (real sockets, the real CLI):
every bad message is skipped and counted; it never stops, crashes or allocates what a 5-byte
message announces. Also: a slow live reader stays current, a silent endpoint is reported, and the
summary's percentiles and rate are right."""

from __future__ import annotations

import json
import struct
import threading
import time

import cv2
import numpy as np
import pytest
import zmq

from engines.meta import ClassTable
from stream.messages import encode_classes_reply, encode_end_message, encode_mask_message

from .mask_helpers import free_port_block, segstream

CLASSES = ClassTable(names=tuple(f"c{i}" for i in range(4)), palette=((0, 0, 0),) * 4, ignore_index=None)


def _good(seq: int, **kw) -> list[bytes]:
    mask = np.zeros((36, 48), np.uint8)
    mask[:, seq % 48 :] = 2
    return [
        bytes(f)
        for f in encode_mask_message(stream="0", seq=seq, frame_index=seq, mask=mask, classes=CLASSES, **kw)
    ]


def _edit(frames: list[bytes], **changes) -> list[bytes]:
    head = json.loads(frames[1])
    head.update(changes)
    return [frames[0], json.dumps(head).encode(), *frames[2:]]


class HostilePublisher:
    """A PUB socket the test writes to directly, and a class-table REP that answers like segstream's."""

    def __init__(self) -> None:
        self.port = free_port_block()
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://127.0.0.1:{self.port}")
        self._stop = threading.Event()
        self._rep = threading.Thread(target=self._serve, daemon=True)
        self._rep.start()

    def _serve(self) -> None:
        rep = self.ctx.socket(zmq.REP)
        rep.bind(f"tcp://127.0.0.1:{self.port + 1}")
        while not self._stop.is_set():
            if rep.poll(100):
                rep.recv()
                rep.send(encode_classes_reply("0", CLASSES))
        rep.close(0)

    def close(self) -> None:
        self._stop.set()
        self._rep.join(5)
        self.pub.close(0)
        self.ctx.term()


@pytest.fixture
def hostile():
    pub = HostilePublisher()
    yield pub
    pub.close()


def _hostile_messages(seq: int) -> list[list[bytes]]:
    good = _good(seq)
    overlay_good = _good(seq, overlay_jpeg=cv2.imencode(".jpg", np.zeros((36, 48, 3), np.uint8))[1].tobytes())
    bad_overlay = _edit(overlay_good[:3] + [b"definitely not a jpeg"], parts=[
        {"name": "overlay", "encoding": "jpeg", "bytes": len(b"definitely not a jpeg")}
    ])  # fmt: skip
    bomb = _edit(_good(seq, encoding="rle"), width=32768, height=32768, mask_bytes=5)
    bomb[2] = struct.pack("<IB", 32768 * 32768, 0)
    ids = good[:2] + [bytes(np.full(36 * 48, 9, np.uint8))]  # class 9 of a 4-class table
    return [
        bad_overlay,
        [b"0", b"[" * 100_000 + b"]" * 100_000, good[2]],  # nested past the recursion limit
        bomb,
        ids,
        _edit(good, seq=-1),
        [*good, b"unannounced part"],
        overlay_good,  # a good one among them, with a real JPEG overlay
    ]


@pytest.mark.timeout(120)
def test_cli_skips_and_counts_every_hostile_message(hostile, tmp_path):
    proc = segstream(
        "subscribe", f"tcp://127.0.0.1:{hostile.port}", "--count", "5", "--timeout", "20",
        "--save", str(tmp_path / "save"), "--video", str(tmp_path / "v.mp4"),
        "--stats-json", str(tmp_path / "summary.json"),
    )  # fmt: skip
    seq = 0
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            for frames in _hostile_messages(seq):
                hostile.pub.send_multipart(frames)
                time.sleep(0.01)  # one at a time: each is judged, not conflated away
            seq += 1
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "RecursionError" not in err
    lines = [ln for ln in out.splitlines() if ln.startswith("seq")]
    assert len(lines) == 5 and all("48x36" in ln for ln in lines), out
    assert "skipped malformed message" in err
    saved = sorted((tmp_path / "save").glob("*_overlay.jpg"))
    assert len(saved) == 5  # only the good ones were saved; no 32768x32768 PNG was ever written
    assert all(cv2.imread(str(p)).shape == (36, 48, 3) for p in saved)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["received"] == 5
    # six malformed kinds a round, at least the 4 rounds between the first and the fifth good mask
    assert summary["skipped"]["malformed"] >= 6 * 4, summary


def test_subscriber_counts_each_kind(hostile):
    from stream.subscriber import Subscriber

    with Subscriber(f"tcp://127.0.0.1:{hostile.port}", conflate=False) as sub:
        time.sleep(0.5)  # subscription in place
        for frames in _hostile_messages(3):
            hostile.pub.send_multipart(frames)
        msg = sub.recv(10)
        assert msg is not None and msg.seq == 3 and msg.overlay.shape == (36, 48, 3)
        assert sub.stats.skipped == {"malformed": 6}, sub.stats.skipped
        assert sub.stats.received == 1 and sub.stats.missed_at_start == 3


def test_cli_says_it_is_waiting_and_where():
    port = free_port_block()
    proc = segstream("subscribe", f"tcp://127.0.0.1:{port}", "--timeout", "6")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    flat = " ".join(err.split())
    assert f"waiting for masks from tcp://127.0.0.1:{port}" in flat
    assert f"still waiting for tcp://127.0.0.1:{port}: nothing is listening there" in flat
    assert "no mask received" in flat


def test_cli_summary_percentiles_and_rate(hostile, tmp_path):
    """Two masks published 1 s apart but delivered 0.3 s apart: 1 fps (it printed the delivery rate,
    991.8 fps for a backlog read at once), and p95 >= p50 (it printed p95 < p50)."""
    proc = segstream(
        "subscribe", f"tcp://127.0.0.1:{hostile.port}", "--count", "2", "--timeout", "20",
        "--stats-json", str(tmp_path / "summary.json"),
    )  # fmt: skip
    time.sleep(3)  # the CLI is up and subscribed
    now = time.time()
    for seq, (cap, pub) in enumerate([(now - 2.0, now - 1.0), (now - 0.5, now)]):
        frames = _good(seq, timestamps={"capture": cap, "infer": cap}, publish_time=pub)
        hostile.pub.send_multipart(frames)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    p50, p95 = summary["latency_ms"]["p50"], summary["latency_ms"]["p95"]
    assert summary["received"] == 2
    assert summary["fps"] == pytest.approx(1.0, abs=0.05), summary
    assert p95 >= p50 and p50 > 400, summary  # latencies ≈ 2000 ms and ≈ 500 ms + delivery


@pytest.mark.timeout(120)
def test_slow_live_reader_stays_current(hostile):
    """150 ms per mask against a 30 fps stream: the subscriber hands out the newest mask (gaps counted)
    instead of a backlog that grew to seconds with a large receive queue."""
    from stream.subscriber import Subscriber

    stop = threading.Event()

    def feed() -> None:
        seq = 0
        while not stop.is_set():
            now = time.time()
            hostile.pub.send_multipart(_good(seq, encoding="rle", timestamps={"capture": now, "infer": now}))
            seq += 1
            time.sleep(1 / 30)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    latencies = []
    try:
        with Subscriber(f"tcp://127.0.0.1:{hostile.port}") as sub:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 6:
                msg = sub.recv(2)
                if msg is not None:
                    latencies.append(msg.latency)
                    time.sleep(0.15)
            gaps, stale = sub.stats.gaps, sub.stats.stale
    finally:
        stop.set()
        feeder.join(5)
    late = sorted(latencies[len(latencies) // 2 :])
    assert len(latencies) > 15
    assert late[len(late) // 2] < 0.5, late  # measured: ≈ 0.03 s; the old queue gave 3-4 s
    assert gaps > 50 and stale > 0


def test_end_message_with_reason_reaches_the_summary(hostile):
    proc = segstream("subscribe", f"tcp://127.0.0.1:{hostile.port}", "--timeout", "20")
    time.sleep(3)
    hostile.pub.send_multipart(_good(0))
    time.sleep(0.2)
    hostile.pub.send_multipart(encode_end_message("0", 4, 5, reason="dropped: testing"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "dropped: testing" in err


def test_client_without_keys_against_a_curve_publisher_is_told_so():
    """ZeroMQ retries the failed handshake silently forever; the subscriber turns it into one error."""
    from stream.subscriber import SubscribeError, Subscriber

    ctx = zmq.Context()
    public, secret = zmq.curve_keypair()
    pub = ctx.socket(zmq.PUB)
    pub.curve_server, pub.curve_publickey, pub.curve_secretkey = True, public, secret
    port = free_port_block()
    pub.bind(f"tcp://127.0.0.1:{port}")
    try:
        with (
            pytest.raises(SubscribeError, match="requires CURVE"),
            Subscriber(f"tcp://127.0.0.1:{port}") as sub,
        ):
            sub.recv(10)
    finally:
        pub.close(0)
        ctx.term()
