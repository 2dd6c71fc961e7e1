"""Many streams, one model (issue 13): real runs with several sources, real processes, sockets, files.

- a file read flat out and a paced live source share the infer worker: the file loses nothing, the live
  stream drops nothing (frames are fed round-robin across streams);
- three streams from a config file, one of them a network stream whose server is killed: that stream ends
  on its own, the other two keep every frame, and the mask headers carry each stream's id;
- a remote infer worker fed garbage counts and drops it, and computes the maps a frame asks for;
- a stream added and removed through the control API while the run goes on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.procs import (
    frames_in,
    start,
)

pytestmark = pytest.mark.timeout(180)


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg/ffprobe not installed")


@needs_ffmpeg
def test_a_file_flat_out_does_not_starve_a_live_stream(tmp_path, onnx_model, sample_clip):
    live_n = 30
    p = start(
        "run", sample_clip.path, f"synthetic://?size=320x240&fps=10&frames={live_n}",
        "--model", onnx_model, "--threads", "1", "--workers", "1", "--no-progress",
        "--sink", "out-{stream}.mp4", "--stats-json", "stats.json",
        cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = p.communicate(timeout=150)
    assert p.returncode == 0, stderr
    rep = json.loads((tmp_path / "stats.json").read_text())
    per = rep["stream_stats"]
    # the file: lossless, every frame in its own output; the live camera: every frame, none dropped
    assert per["0"]["frames"] == sample_clip.frames and not per["0"]["drops"], per
    assert per["1"]["frames"] == live_n and not per["1"]["drops"], per
    assert frames_in(tmp_path / "out-0.mp4") == sample_clip.frames
    assert frames_in(tmp_path / "out-1.mp4") == live_n
    # one shared preprocess and infer worker served both; each stream had its own capture and overlay
    assert {"capture", "capture@1", "overlay", "overlay@1", "preprocess", "infer"} <= set(rep["stages"])
    assert rep["stages"]["infer"]["frames_out"] == sample_clip.frames + live_n
    # fair: live frames go to infer between the file's, not behind its queue (in FIFO order they would
    # wait as long as the file's frames do)
    assert per["1"]["latency_ms"]["p50"] < 0.5 * per["0"]["latency_ms"]["p50"], per
    assert f"stream 1: {live_n} frames" in stdout


class TsServer:
    """ffmpeg serving a clip as MPEG-TS over tcp, paced (-re), to one client: a camera to pull the plug on."""

    def __init__(self, clip: Path) -> None:
        from stream.transport import free_tcp_port

        self.port = free_tcp_port()
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip)]
            + ["-c", "copy", "-f", "mpegts", f"tcp://127.0.0.1:{self.port}?listen=1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_listening(self, timeout_s: float = 15.0) -> None:
        """Until ffmpeg listens (seen in /proc/net/tcp, state 0A): a test connect would use up its one
        accept, and a fixed sleep loses the race on a loaded machine."""
        end = time.monotonic() + timeout_s
        port = f":{self.port:04X}"
        while time.monotonic() < end:
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                try:
                    rows = [r.split() for r in Path(table).read_text().splitlines()[1:]]
                except OSError:
                    continue
                if any(r[1].endswith(port) and r[3] == "0A" for r in rows):
                    return
            assert self.proc.poll() is None, "ffmpeg exited before listening"
            time.sleep(0.05)
        raise AssertionError(f"ffmpeg did not listen on {self.port} within {timeout_s} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def collect_masks(port: int, into: list, stop: threading.Event) -> None:
    """(topic, header) of every mask published on PORT until ``stop``."""
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 100)
    sub.connect(f"tcp://127.0.0.1:{port}")
    try:
        while not stop.is_set():
            try:
                parts = sub.recv_multipart()
            except zmq.Again:
                continue
            into.append((bytes(parts[0]).decode(), json.loads(parts[1])))
    finally:
        sub.close(0)
        ctx.term()


@needs_ffmpeg
def test_one_of_three_streams_loses_its_source_and_the_others_keep_every_frame(
    tmp_path, onnx_model, avi_clip
):
    from stream.transport import free_tcp_port

    n = 80  # 8 s at 10 fps: the network stream's server is killed well before these end
    server = TsServer(avi_clip.path)
    pub_b, pub_net = free_tcp_port(), free_tcp_port()
    live = f"synthetic://?size=320x240&fps=10&frames={n}"
    (tmp_path / "streams.toml").write_text(
        f"""
threads = 1
workers = 1
progress = false
stats_json = "stats.json"
model = "{onnx_model}"

[[streams]]
id = "a"
uri = "{live}"
sinks = ["a.mp4"]

[[streams]]
id = "b"
uri = "{live}"
sinks = ["b.mp4", "zmq-pub://127.0.0.1:{pub_b}"]

[[streams]]
id = "net"
uri = "tcp://127.0.0.1:{server.port}?reconnect=0"
sinks = ["net.mp4", "zmq-pub://127.0.0.1:{pub_net}"]
"""
    )
    masks_b: list = []
    masks_net: list = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=collect_masks, args=(port, into, stop), daemon=True)
        for port, into in ((pub_b, masks_b), (pub_net, masks_net))
    ]
    for t in threads:
        t.start()
    server.wait_listening()  # ffmpeg listening before the run connects
    p = start("run", "--config", "streams.toml", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while len(masks_net) < 5 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert len(masks_net) >= 5, "the network stream never delivered"
        server.kill()  # the camera goes away for good (reconnect=0)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        stop.set()
        server.kill()
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert "Traceback" not in stderr
    assert p.returncode == 2, stderr  # the run says a stream failed, after the others finished
    assert "stream net:" in stderr and "the other streams go on" in stderr
    rep = json.loads((tmp_path / "stats.json").read_text())
    per = rep["stream_stats"]
    for sid in ("a", "b"):  # no gap: every frame written, none dropped
        assert per[sid]["frames"] == n and not per[sid]["drops"], per
        assert frames_in(tmp_path / f"{sid}.mp4") == n
    assert frames_in(tmp_path / "net.mp4") >= 5  # what the dead stream wrote is kept, finalized
    # the stream id is the topic and the header's stream field of every mask
    assert masks_b and all(t == "b" and h["stream"] == "b" for t, h in masks_b)
    assert all(t == "net" and h["stream"] == "net" for t, h in masks_net)


def test_remote_worker_drops_garbage_and_computes_what_frames_ask_for(tmp_path, onnx_model):
    import zmq

    from engines.meta import ModelMeta
    from engines.runtime.preprocess import prepare_batch
    from stream import headers as H
    from stream.config import PipelineConfig
    from stream.pipeline import probe_model
    from stream.transport import free_tcp_port

    info = probe_model(PipelineConfig(model=str(onnx_model)))
    meta = ModelMeta.from_json(info["meta"])
    x = prepare_batch([np.full((240, 320, 3), 90, np.uint8)], meta, uint8=info["wants_uint8"])[0]
    p_in, p_out = free_tcp_port(), free_tcp_port()
    zctx = zmq.Context()
    push, pull = zctx.socket(zmq.PUSH), zctx.socket(zmq.PULL)
    push.bind(f"tcp://127.0.0.1:{p_in}")
    pull.bind(f"tcp://127.0.0.1:{p_out}")
    pull.setsockopt(zmq.RCVTIMEO, 60_000)
    log = (tmp_path / "worker.log").open("w")
    worker = start(
        "worker", "infer", "--in", f"tcp://127.0.0.1:{p_in}", "--out", f"tcp://127.0.0.1:{p_out}",
        "--model", onnx_model, "--threads", "1",
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        junk = [
            [b"not json"],
            [b'{"v": 1}'],
            [H.encode(H.FrameHeader(seq=1), {"input": x})[0]],  # announces a part it lacks
            H.encode(H.FrameHeader(seq=2, slot=0, ring=("segstream-1-none", 2, 10, 10))),  # no input here
        ]
        for msg in junk:
            push.send_multipart(msg)
        push.send_multipart(H.encode(H.FrameHeader(stream="cam", seq=7, want=("confidence",)), {"input": x}))
        push.send_multipart(H.encode(H.FrameHeader(stream="cam", seq=8), {"input": x}))
        got = [H.decode(pull.recv_multipart()) for _ in range(2)]
        assert worker.poll() is None, "the worker died of a malformed message"
    finally:
        worker.terminate()
        worker.wait(20)
        log.close()
        push.close(0)
        pull.close(0)
        zctx.term()
    by_seq = {h.seq: (h, a) for h, a in got}
    (h7, a7), (_, a8) = by_seq[7], by_seq[8]
    assert h7.stream == "cam" and a7["mask"].shape == (120, 160)
    assert a7["confidence"].shape == (120, 160) and a7["confidence"].dtype == np.uint8  # asked for
    assert "confidence" not in a8  # not asked for: not computed into the message
    text = (tmp_path / "worker.log").read_text()
    assert text.count("dropped a malformed message") == len(junk), text


def test_a_stream_added_and_removed_while_the_run_goes_on(tmp_path, onnx_model):
    import zmq

    from stream.control import ControlError, request
    from stream.transport import free_tcp_port

    n = 300  # stream 0: 30 s at 10 fps; removed long before that
    ctl = f"tcp://127.0.0.1:{free_tcp_port()}"
    p = start(
        "run", f"synthetic://?size=320x240&fps=10&frames={n}", "--model", onnx_model,
        "--threads", "1", "--no-progress", "--sink", "a.mp4", "--stats-json", "stats.json",
        "--control", ctl,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # the control port answers once the stages are being started
            try:
                request(ctl, {"cmd": "list"})
                break
            except ControlError:
                assert time.monotonic() < deadline and p.poll() is None, "the run never answered"
        add = {"id": "cam2", "uri": "synthetic://?size=320x240&fps=10&frames=100000", "sinks": ["cam2.mp4"]}
        request(ctl, {"cmd": "add", "stream": add})
        # refused, the run goes on: a taken id, a sink of another stream, garbage on the port
        with pytest.raises(ControlError, match="a stream of this run has that id"):
            request(ctl, {"cmd": "add", "stream": {**add, "sinks": ["other.mp4"]}})
        with pytest.raises(ControlError, match="sink 'a.mp4' is also stream '0''s"):
            request(ctl, {"cmd": "add", "stream": {**add, "id": "cam3", "sinks": ["a.mp4"]}})
        raw = zmq.Context.instance().socket(zmq.REQ)
        raw.connect(ctl)
        raw.send(b"\xff garbage")
        assert raw.poll(10_000)
        reply = json.loads(raw.recv())
        raw.close(0)
        assert reply == {"ok": False, "error": "the request is not JSON"}
        while True:
            cam2 = {s["id"]: s for s in request(ctl, {"cmd": "list"})["streams"]}["cam2"]
            if cam2["frames"] >= 10:
                break
            assert time.monotonic() < deadline, cam2
            time.sleep(0.1)
        request(ctl, {"cmd": "remove", "id": "cam2"})
        while {s["id"]: s for s in request(ctl, {"cmd": "list"})["streams"]}["cam2"]["state"] != "removed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # the last stream removed too: the run has nothing left to do and ends (at once, not at frame n)
        request(ctl, {"cmd": "remove", "id": "0"})
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, stderr
    rep = json.loads((tmp_path / "stats.json").read_text())
    per = rep["stream_stats"]
    # stream 0 went on without a gap while cam2 came and went; each output holds every frame its stream
    # wrote, finalized at its removal
    assert 10 <= per["0"]["frames"] < n and not per["0"]["drops"], per
    assert per["cam2"]["frames"] >= 10 and not per["cam2"]["drops"], per
    assert frames_in(tmp_path / "a.mp4") == per["0"]["frames"]
    assert frames_in(tmp_path / "cam2.mp4") == per["cam2"]["frames"]
    assert "stream cam2 added" in stderr and "stream cam2 removed" in stderr
