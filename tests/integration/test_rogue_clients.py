"""Rogue recorders against a real `segstream run`: DEALER clients that grant credit 0 forever, grant
one credit and go silent, or send garbage, on the lossless port (opened only when asked for). The
run keeps its pace, a well-behaved recorder still gets every mask, the rogues are dropped, and the
mp4 is playable."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.procs import decoded_frames

from .mask_helpers import free_port_block, segstream, start_ready

# A recorder that misbehaves in one way, as its own process:
#   python -c ROGUE ENDPOINT MODE SECONDS
# prints one JSON line: how many mask messages it received and the end message it got (if any).
ROGUE = """
import json, sys, time, zmq
endpoint, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.connect(endpoint)
print("ready", flush=True)
masks, end = 0, None
deadline = time.monotonic() + seconds
if mode == "credit1":
    s.send_multipart([b"credit", b"1"])  # once, then never again
while time.monotonic() < deadline and end is None:
    if mode == "credit0":
        s.send_multipart([b"credit", b"0"])  # keeps talking, never grants anything
    elif mode == "garbage":
        s.send_multipart([b"credit", b"lots", b"please"])
    while s.poll(0):
        parts = s.recv_multipart()
        if len(parts) == 2:
            end = json.loads(parts[1])
        else:
            masks += 1
    time.sleep(0.05)
print(json.dumps({"masks": masks, "end": end}), flush=True)
"""


def _rogue(endpoint: str, mode: str, seconds: float) -> subprocess.Popen:
    return start_ready(ROGUE, endpoint, mode, seconds)


@pytest.mark.timeout(240)
def test_rogue_recorders_cannot_stall_a_file_run(tmp_path, onnx_model):
    """credit 0 forever used to block the overlay until the supervisor killed it (exit 1, unplayable
    mp4); now it is refused at once, the silent one is dropped after lossless_timeout, and the honest
    recorder receives every mask."""
    port = free_port_block()
    lossless = f"tcp://127.0.0.1:{port + 2}"
    rogues = {mode: _rogue(lossless, mode, 60) for mode in ("credit0", "garbage", "credit1")}
    honest = segstream(
        "subscribe", f"tcp://127.0.0.1:{port}", "--lossless", "--save", str(tmp_path / "rec"),
        "--timeout", "90", "--quiet",
    )  # fmt: skip
    n = 40
    out = tmp_path / "out.mp4"
    t0 = time.monotonic()
    run = segstream(
        "run", "synthetic://?size=320x240&fps=25&frames=40&live=0", "--model", str(onnx_model),
        "--no-progress", "--stall-timeout", "8",
        "--sink", str(out),
        # 2 recorders: the honest one and credit1 (credit0 and garbage never count as recorders)
        "--sink", f"zmq-pub://127.0.0.1:{port}?lossless=on&wait_recorders=2&lossless_timeout=2",
    )  # fmt: skip
    run_out, run_err = run.communicate(timeout=180)
    elapsed = time.monotonic() - t0
    rec_out, rec_err = honest.communicate(timeout=60)
    results = {}
    for mode, proc in rogues.items():
        proc.kill()  # they would keep trying for 60 s; what they printed so far is not needed
        proc.wait(10)
        results[mode] = proc
    assert run.returncode == 0, run_err
    assert decoded_frames(out) == n  # finalized and playable, every frame
    headers = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").glob("*.json"))]
    assert [h["seq"] for h in headers] == list(range(n)), rec_err
    assert honest.returncode == 0 and "end of stream" in rec_err
    # the silent recorder cost at most lossless_timeout (2 s) once, not the stall timeout and a kill
    assert "restart" not in run_err and "stalled" not in run_err, run_err
    assert elapsed < 120, elapsed


@pytest.mark.timeout(240)
def test_rogue_recorders_are_told_they_were_dropped(tmp_path, onnx_model):
    port = free_port_block()
    lossless = f"tcp://127.0.0.1:{port + 2}"
    silent = _rogue(lossless, "credit1", 40)
    zero = _rogue(lossless, "credit0", 40)
    run = segstream(
        "run", "synthetic://?size=320x240&fps=25&frames=30&live=0", "--model", str(onnx_model),
        "--no-progress", "--sink", str(tmp_path / "out.mp4"),
        "--sink", f"zmq-pub://127.0.0.1:{port}?lossless=on&wait_recorders=1&lossless_timeout=1.5",
    )  # fmt: skip
    _, run_err = run.communicate(timeout=180)
    assert run.returncode == 0, run_err
    got = json.loads(silent.communicate(timeout=60)[0].splitlines()[-1])
    assert got["masks"] == 1  # its one credit
    assert got["end"] is not None and got["end"]["reason"].startswith("dropped")
    zero.kill()
    zero.wait(10)
    assert decoded_frames(tmp_path / "out.mp4") == 30


@pytest.mark.timeout(240)
def test_live_run_keeps_its_pace_with_a_silent_recorder(tmp_path, onnx_model):
    """A live source never waits for a recorder: one credit and silence used to stop the output for
    lossless_timeout (10 s); now the lossy stream keeps flowing at the source's rate."""
    from stream.subscriber import Subscriber

    port = free_port_block()
    silent = _rogue(f"tcp://127.0.0.1:{port + 2}", "credit1", 60)
    zero = _rogue(f"tcp://127.0.0.1:{port + 2}", "credit0", 60)
    out = tmp_path / "live.mp4"
    arrivals: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
            while not stop.is_set():
                if sub.recv(0.2) is not None:
                    arrivals.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run = segstream(
        "run", "synthetic://?size=320x240&fps=10&frames=80", "--model", str(onnx_model), "--no-progress",
        "--sink", str(out), "--sink", f"zmq-pub://127.0.0.1:{port}?lossless=on&lossless_timeout=10",
    )  # fmt: skip
    _, run_err = run.communicate(timeout=180)
    stop.set()
    watcher.join(10)
    for p in (silent, zero):
        p.kill()
        p.wait(10)
    assert run.returncode == 0, run_err
    assert len(arrivals) > 40, len(arrivals)  # 80 frames at 10 fps; some may drop on a busy machine
    worst = max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    assert worst < 3.0, f"the output stopped for {worst:.1f} s"
    assert decoded_frames(out) >= len(arrivals) - 5


def test_lossless_port_is_closed_unless_asked_for():
    """Port + 2 used to be bound by every zmq-pub sink; now nothing listens there unless asked."""
    import socket

    from engines.meta import ClassTable
    from stream.sinks.base import StreamInfo
    from stream.sinks.zmq_pub import ZmqPubSink

    classes = ClassTable(names=("a", "b"), palette=((0, 0, 0), (1, 1, 1)))
    port = free_port_block()
    sink = ZmqPubSink(f"zmq-pub://127.0.0.1:{port}")
    sink.open(StreamInfo("0", 8, 8, 25.0, classes, live=False))
    try:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) == 0  # the lossy stream is there
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port + 2)) != 0  # the recorder port is not
    finally:
        sink.close()
