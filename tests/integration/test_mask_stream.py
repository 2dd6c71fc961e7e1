"""The mask stream end to end between real processes: every mask with its header for a late-joining
CLI subscriber (class table included), lossy vs lossless delivery with a deliberately slow
subscriber, and malformed messages skipped and counted."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import zmq

from stream.messages import encode_classes_reply, encode_mask_message
from stream.sinks.base import SinkError
from stream.sinks.zmq_pub import ZmqPubSink
from tests.procs import env

from .mask_helpers import (
    NODE_CLIENT,
    Feeder,
    free_port_block,
    node_client_missing,
    real_samples,
    segstream,
    slow_subscriber,
    stream_info,
)

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "stream/schemas/mask-header.schema.json").read_text()
)


@pytest.fixture(scope="module")
def samples(camvid):
    return real_samples(camvid)


def _sink(spec: str, samples) -> ZmqPubSink:
    classes, frames, _ = samples
    sink = ZmqPubSink(spec)
    sink.open(stream_info(classes, frames[0]))
    return sink


def test_late_cli_subscriber_gets_masks_headers_and_class_table(samples, tmp_path):
    classes, frames, masks = samples
    port = free_port_block()
    sink = _sink(f"zmq-pub://127.0.0.1:{port}?encoding=rle&overlay=1", samples)
    with Feeder(sink, frames, masks, rate=40) as feeder:
        while feeder.written < 30:  # the subscriber joins a stream that is already running
            time.sleep(0.02)
        proc = segstream(
            "subscribe", f"tcp://127.0.0.1:{port}", "--count", "8", "--timeout", "10",
            "--save", str(tmp_path), "--video", str(tmp_path / "overlays.mp4"),
        )  # fmt: skip
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("seq")]
    seqs = [int(ln.split()[1]) for ln in lines]
    assert len(seqs) == 8 and seqs == sorted(seqs) and seqs[0] >= 30
    assert "received" in err and "Traceback" not in err
    for seq in seqs:
        header = json.loads((tmp_path / f"{seq:08d}.json").read_text())
        jsonschema.validate(header, SCHEMA)
        saved = cv2.imread(str(tmp_path / f"{seq:08d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(saved, masks[seq % len(masks)])
        # the colorized mask uses the palette fetched from the class-table endpoint (late joiner)
        color = cv2.imread(str(tmp_path / f"{seq:08d}_color.png"))
        assert np.array_equal(color, cv2.LUT(cv2.cvtColor(saved, cv2.COLOR_GRAY2BGR), classes.lut_bgr()))
        assert (tmp_path / f"{seq:08d}_overlay.jpg").stat().st_size > 1000
    assert sink.stats["classes_requests"] >= 1
    video = cv2.VideoCapture(str(tmp_path / "overlays.mp4"))
    n_video = 0
    while video.read()[0]:
        n_video += 1
    assert n_video == 8


def test_lossy_slow_subscriber_sees_gaps_and_never_slows_the_publisher(samples):
    _, frames, masks = samples
    port = free_port_block()
    sink = _sink(f"zmq-pub://127.0.0.1:{port}", samples)
    slow = slow_subscriber(f"tcp://127.0.0.1:{port}", "lossy", delay=0.05, count=10_000, idle=1.5)
    feeder = Feeder(sink, frames, masks, rate=200, total=400)  # 10x faster than the reader
    t0 = time.perf_counter()
    feeder.start()
    feeder.join(30)
    elapsed = time.perf_counter() - t0
    sink.close()
    out, err = slow.communicate(timeout=60)
    got = json.loads(out.splitlines()[-1])
    assert feeder.written == 400
    # 400 masks to a reader that needs 50 ms each would take 20 s if it could hold the publisher back
    assert elapsed < 8.0, elapsed
    assert max(feeder.write_times) < 0.5
    assert 0 < len(got["seqs"]) < 200 and got["gaps"] > 0
    assert got["seqs"] == sorted(got["seqs"])
    # gaps between received masks, plus those between the last one and the announced end
    assert got["gaps"] >= got["seqs"][-1] - got["seqs"][0] + 1 - len(got["seqs"])
    assert got["classes"]


def test_masks_nobody_subscribes_to_are_not_encoded(samples):
    """The publisher is an XPUB: while no subscriber is there it encodes nothing (polygons, the overlay
    JPEG), from a subscriber's subscription on it encodes every mask, and once it leaves it stops."""
    from stream.subscriber import Subscriber

    classes, frames, masks = samples
    port = free_port_block()
    sink = _sink(f"zmq-pub://127.0.0.1:{port}?encoding=polygons&tolerance=0&overlay=1", samples)
    with Feeder(sink, frames, masks, rate=100) as feeder:
        deadline = time.monotonic() + 20
        while sink.stats["unsubscribed"] < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.stats["unsubscribed"] >= 20
        with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
            got = [sub.recv(timeout=10) for _ in range(5)]
            skipped = sink.stats["unsubscribed"]
            got += [sub.recv(timeout=10) for _ in range(10)]
            assert sink.stats["unsubscribed"] == skipped  # subscribed: every mask encoded
        assert all(m is not None for m in got)
        for m in got:  # tolerance 0: the masks exactly, and the overlay JPEG with them
            assert np.array_equal(m.mask, masks[m.seq % len(masks)])
            assert m.overlay is not None and m.overlay.shape == frames[0].shape
        seqs = [m.seq for m in got]
        assert seqs == sorted(set(seqs))  # a lossy subscriber may miss some under load, in order
        # it left: its unsubscription reaches the publisher, which stops encoding again
        left = sink.stats["unsubscribed"]
        deadline = time.monotonic() + 20
        while sink.stats["unsubscribed"] < left + 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.stats["unsubscribed"] >= left + 10
    assert sink.stats["published"] == feeder.written


def test_lossless_slow_recorder_gets_everything_with_backpressure(samples):
    _, frames, masks = samples
    port = free_port_block()
    sink = ZmqPubSink(f"zmq-pub://127.0.0.1:{port}?wait_recorders=1")
    opener = threading.Thread(target=sink.open, args=(stream_info(samples[0], frames[0]),))
    opener.start()  # open() waits for the recorder, so a file run reaches it from the first mask
    slow = slow_subscriber(f"tcp://127.0.0.1:{port}", "lossless", delay=0.02, count=10_000)
    opener.join(30)
    fast_lossy = slow_subscriber(f"tcp://127.0.0.1:{port}", "lossy", delay=0.0, count=10_000)
    feeder = Feeder(sink, frames, masks, rate=0, total=80)
    t0 = time.perf_counter()
    feeder.start()
    feeder.join(60)
    elapsed = time.perf_counter() - t0
    sink.close()
    got = json.loads(slow.communicate(timeout=60)[0].splitlines()[-1])
    fast_lossy.communicate(timeout=60)
    assert got["seqs"] == list(range(80)) and got["gaps"] == 0 and got["ended"]
    assert elapsed > 80 * 0.02 * 0.7, elapsed  # the publisher waited for the recorder
    assert sink.stats["lossless_wait_s"] > 0.5 and sink.stats["recorders_dropped"] == 0


def test_malformed_messages_are_skipped_and_counted(samples):
    classes, frames, masks = samples
    port = free_port_block()
    ctx = zmq.Context()
    pub, rep = ctx.socket(zmq.PUB), ctx.socket(zmq.REP)
    pub.bind(f"tcp://127.0.0.1:{port}")
    rep.bind(f"tcp://127.0.0.1:{port + 1}")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if rep.poll(100):
                rep.recv()
                rep.send(encode_classes_reply("cam0", classes))
        rep.close(0)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    proc = segstream("subscribe", f"tcp://127.0.0.1:{port}", "--count", "6", "--timeout", "10")
    good = [
        bytes(f)
        for f in encode_mask_message(stream="cam0", seq=0, frame_index=0, mask=masks[0], classes=classes)
    ]
    future = json.loads(good[1])
    future["version"] = 99
    bad = [
        [b"cam0"],  # truncated
        [b"cam0", b"{oops", good[2]],  # malformed header
        [b"cam0", json.dumps(future).encode(), good[2]],  # unknown version
        [good[0], good[1], good[2][:100]],  # truncated mask
        [b"cam0", b"\x80\x04\x95 pickle-looking bytes", b""],
    ]
    seq = 0
    try:
        deadline = time.time() + 30
        while proc.poll() is None and time.time() < deadline:
            for frames_ in bad:
                pub.send_multipart(frames_)
            good = [
                bytes(f)
                for f in encode_mask_message(
                    stream="cam0", seq=seq, frame_index=seq, mask=masks[seq % len(masks)], classes=classes
                )
            ]
            pub.send_multipart(good)
            seq += 1
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        server.join(5)
        pub.close(0)
        ctx.term()
    assert proc.returncode == 0, err
    assert len([ln for ln in out.splitlines() if ln.startswith("seq")]) == 6
    assert "Traceback" not in err
    for reason in ("malformed", "truncated", "version"):
        assert f"skipped {reason} message" in err, err


def test_all_interfaces_without_curve_warns(samples, capfd):
    port = free_port_block()
    sink = _sink(f"zmq-pub://0.0.0.0:{port}?lossless=off", samples)
    sink.close()
    assert "WARNING" in capfd.readouterr().err
    sink = _sink(f"zmq-pub://127.0.0.1:{port}", samples)
    sink.close()
    assert "WARNING" not in capfd.readouterr().err


def test_bad_sink_options_are_one_clear_error(samples):
    with pytest.raises(SinkError, match="encoding=gif"):
        ZmqPubSink("zmq-pub://127.0.0.1:5555?encoding=gif")
    with pytest.raises(SinkError, match="unknown option"):
        ZmqPubSink("zmq-pub://127.0.0.1:5555?colour=1")
    port = free_port_block()
    first = _sink(f"zmq-pub://127.0.0.1:{port}", samples)
    try:
        with pytest.raises(SinkError, match="cannot bind"):
            _sink(f"zmq-pub://127.0.0.1:{port}", samples)
    finally:
        first.close()


@pytest.mark.timeout(180)
def test_segstream_run_delivers_every_mask_to_a_recorder(tmp_path, avi_clip, onnx_model):
    """`segstream run CLIP --sink zmq-pub://...` in one process, `segstream subscribe --lossless` and the
    Node.js client in others: every frame of the file arrives, in order, with its header; the live view
    of the same run answers too."""
    port, view_port = free_port_block(), free_port_block(1)
    n = 30
    recorder = segstream(
        "subscribe",
        f"tcp://127.0.0.1:{port}",
        "--lossless",
        "--save",
        str(tmp_path / "rec"),
        "--timeout",
        "90",
    )
    node = None
    if node_client_missing() is None:
        node_args = [f"tcp://127.0.0.1:{port}", "--lossless", "--count", "100000", "--timeout", "90"]
        node = subprocess.Popen(
            ["node", str(NODE_CLIENT / "subscribe.js"), *node_args], text=True, stdout=subprocess.PIPE
        )
    run = segstream(
        "run", str(avi_clip.path), "--model", str(onnx_model), "--max-frames", str(n),
        "--no-progress",
        "--sink",
        f"zmq-pub://127.0.0.1:{port}?wait_recorders={1 if node is None else 2}&encoding=rle&confidence=raw",
        "--sink", f"http://127.0.0.1:{view_port}",
    )  # fmt: skip
    view_frames, view_stages = 0, {}
    deadline = time.monotonic() + 150
    while run.poll() is None and time.monotonic() < deadline:
        try:  # the live view of the same run answers while it is running
            with urllib.request.urlopen(f"http://127.0.0.1:{view_port}/stats.json", timeout=2) as r:
                stats = json.loads(r.read())
                view_frames = max(view_frames, stats["frames"])
                view_stages = stats.get("stages") or view_stages
        except OSError:
            pass
        time.sleep(0.2)
    run_out, run_err = run.communicate(timeout=30)
    rec_out, rec_err = recorder.communicate(timeout=60)
    assert run.returncode == 0, run_err
    assert recorder.returncode == 0, rec_err
    headers = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").glob("*.json"))]
    assert [h["seq"] for h in headers] == list(range(n))
    assert [h["frame_index"] for h in headers] == list(range(n))
    for h in headers:
        jsonschema.validate(h, SCHEMA)
        ts = h["timestamps"]
        assert ts["capture"] <= ts["infer"] <= ts["publish"]
        assert (h["width"], h["height"], h["encoding"], h["num_classes"]) == (480, 270, "rle", 11)
        # the infer stage was asked for confidence because a sink publishes it
        assert [p["name"] for p in h["parts"]] == ["confidence"]
    first = cv2.imread(str(tmp_path / "rec" / "00000000.png"), cv2.IMREAD_UNCHANGED)
    assert first.shape == (headers[0]["height"], headers[0]["width"]) and first.max() < 12
    assert "end of stream" in rec_err  # the recorder stopped on the publisher's end message
    assert view_frames > 0
    # per-stage timings measured from the headers' timestamps reach the live view
    assert {"infer", "overlay"} <= set(view_stages), view_stages
    if node is not None:
        out, _ = node.communicate(timeout=60)
        assert node.returncode == 0, out
        summary = json.loads(out.splitlines()[-1])
        assert summary["seqs"] == list(range(n)) and summary["ended"] and summary["ok"]


def test_publisher_restart_with_a_new_class_table_is_followed(samples):
    """A subscriber that stays up while the publisher restarts with another model fetches the new class
    table (the header's digest changed) without being restarted itself."""
    from engines.meta import ClassTable
    from stream.subscriber import Subscriber

    classes, frames, masks = samples
    renamed = ClassTable(names=tuple(f"c{i}" for i in range(12)), palette=tuple((i, i, i) for i in range(12)))
    port = free_port_block()
    with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
        tables = []
        for table in (classes, renamed):
            sink = ZmqPubSink(f"zmq-pub://127.0.0.1:{port}")
            sink.open(stream_info(table, frames[0]))
            with Feeder(sink, frames, masks, rate=50):
                msg = None
                for _ in range(100):  # skip what is still in flight from before the restart
                    msg = sub.recv(5)
                    if msg is not None and msg.header["classes_digest"] == table.digest():
                        break
                assert msg is not None and msg.classes == table
                tables.append(msg.classes)
        assert tables == [classes, renamed]
        assert sub.stats.classes_fetches == 2


def test_masks_at_a_requested_size(samples, tmp_path):
    """`size=WxH`: class ids resized nearest (only classes the model gave), confidence by area, the header's
    width/height are the requested size; a bad size is one clear error."""
    classes, frames, masks = samples
    port = free_port_block()
    sink = _sink(f"zmq-pub://127.0.0.1:{port}?size=120x90&confidence=raw", samples)
    with Feeder(sink, frames, masks, rate=40) as feeder:
        while feeder.written < 10:
            time.sleep(0.02)
        proc = segstream(
            "subscribe", f"tcp://127.0.0.1:{port}", "--count", "4", "--timeout", "10", "--save", str(tmp_path)
        )
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seqs = [int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("seq")]
    assert len(seqs) == 4
    for seq in seqs:
        header = json.loads((tmp_path / f"{seq:08d}.json").read_text())
        assert (header["width"], header["height"]) == (120, 90)
        saved = cv2.imread(str(tmp_path / f"{seq:08d}.png"), cv2.IMREAD_UNCHANGED)
        want = cv2.resize(masks[seq % len(masks)], (120, 90), interpolation=cv2.INTER_NEAREST)
        assert saved.shape == (90, 120) and np.array_equal(saved, want)
    for bad in ("size=12", "size=0x90", "size=99999x2"):
        with pytest.raises(SinkError, match="size="):
            ZmqPubSink(f"zmq-pub://127.0.0.1:{port}?{bad}")


def test_a_first_compilation_of_the_encoders_is_no_stall(tmp_path, avi_clip, onnx_model):
    """The first polygons run after an install compiles the encoders (seconds) in the overlay stage,
    longer than this run's stall timeout: the stage keeps sending heartbeats meanwhile, so it is not
    restarted, and a lossless recorder gets every mask. (NUMBA_CACHE_DIR: an empty cache of its own.)"""
    port, n = free_port_block(), 12
    cold = env(NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    recorder = segstream(
        "subscribe", f"tcp://127.0.0.1:{port}", "--lossless", "--save", str(tmp_path / "rec"),
        "--timeout", "90", env=cold,
    )  # fmt: skip
    stats = tmp_path / "stats.json"
    run = segstream(
        "run", str(avi_clip.path), "--model", str(onnx_model), "--max-frames", str(n), "--no-progress",
        "--stall-timeout", "1.5", "--stats-json", str(stats),
        "--sink", f"zmq-pub://127.0.0.1:{port}?wait_recorders=1&encoding=polygons",
        env=cold,
    )  # fmt: skip
    _, run_err = run.communicate(timeout=150)
    _, rec_err = recorder.communicate(timeout=60)
    assert run.returncode == 0, run_err
    assert recorder.returncode == 0, rec_err
    assert json.loads(stats.read_text())["restarts"] == {}
    assert any((tmp_path / "numba-cache").rglob("*.nbi"))  # it did compile, into its own cache
    saved = sorted((tmp_path / "rec").glob("*.json"))
    headers = [json.loads(p.read_text()) for p in saved if not p.stem.endswith("_segments")]
    assert [h["seq"] for h in headers] == list(range(n))
    assert {h["encoding"] for h in headers} == {"polygons"}
    assert len(saved) == 2 * n  # and each mask's segments document
