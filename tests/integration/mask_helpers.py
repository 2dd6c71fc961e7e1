"""Shared by the mask-stream tests: real CamVid frames + label masks, free port blocks, a feeder thread that
drives a real sink the way the overlay/publish stage does, a slow subscriber process, a header collector.
Starting the CLI as a real process (``segstream``, ``start_ready``) is tests/procs.py's job."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.meta import ClassTable
from stream.sinks.base import Result, Sink, StreamInfo
from tests.procs import REPO, start_ready
from tests.procs import start as segstream  # noqa: F401 - re-exported: the mask tests' name for it

#: the live-view tests' browser (Debian's chromium, driven by Playwright), with nothing of its own going on
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium not installed (CI: apt-get install chromium)"
)


#: the Node.js subscriber written from docs/PROTOCOL.md (a client in another language than the publisher's)
NODE_CLIENT = REPO / "tools" / "clients" / "node"


def node_client_missing() -> str | None:
    """Why the Node.js subscriber cannot run here (node or its packages absent), or None."""
    if shutil.which("node") is None:
        return "node is not installed (CI: apt-get install nodejs npm)"
    if not (NODE_CLIENT / "node_modules" / "zeromq").is_dir():
        return f"the Node client's packages are absent (npm ci --ignore-scripts --prefix {NODE_CLIENT})"
    return None


needs_node_client = pytest.mark.skipif(node_client_missing() is not None, reason=node_client_missing() or "")


def node_subscribe(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``node subscribe.js tcp://127.0.0.1:PORT ARGS`` to its end; its summary is the last stdout line."""
    return subprocess.run(
        ["node", str(NODE_CLIENT / "subscribe.js"), f"tcp://127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def real_samples(camvid: Path, n: int = 4) -> tuple[ClassTable, list[np.ndarray], list[np.ndarray]]:
    """(class table, BGR frames, uint8 label masks) from CamVid's validation split."""
    images = sorted((camvid / "val" / "images").glob("*.jpg"))[:n]
    frames = [cv2.imread(str(p)) for p in images]
    masks = [
        cv2.imread(str(camvid / "val" / "labels" / (p.stem + ".png")), cv2.IMREAD_UNCHANGED) for p in images
    ]
    assert all(f is not None for f in frames) and all(m is not None and m.ndim == 2 for m in masks)
    return ClassTable.from_json_file(camvid / "classes.json"), frames, masks


def free_port_block(n: int = 3) -> int:
    """A base port with base..base+n-1 all free (PUB, class table, lossless)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def make_result(
    seq: int, frames: list[np.ndarray], masks: list[np.ndarray], with_overlay: bool = True
) -> Result:
    k = seq % len(frames)
    frame, mask = frames[k], masks[k]
    overlay = (
        cv2.addWeighted(frame, 0.5, cv2.applyColorMap(mask * 20, cv2.COLORMAP_JET), 0.5, 0)
        if with_overlay
        else None
    )
    now = time.time()
    return Result(
        seq=seq,
        frame_index=seq,
        frame=frame,
        mask=mask,
        overlay=overlay,
        confidence=np.full(mask.shape, 200, np.uint8),
        timestamps={"capture": now - 0.02, "infer": now - 0.005},
        drops={"capture": 0},
        stats={"capture": {"fps": 25.0, "drops": 0}, "infer": {"fps": 24.5, "latency_ms": 12.3}},
    )


class Feeder(threading.Thread):
    """Writes Results into a sink at ``rate`` per second until ``total`` are written or stop().

    As a context manager it starts on entry and, on exit, stops and closes its sink (the order a real
    stage ends in), whatever the block raised."""

    def __init__(self, sink: Sink, frames, masks, rate: float = 50.0, total: int | None = None) -> None:
        super().__init__(daemon=True)
        self.sink, self.frames, self.masks, self.rate, self.total = sink, frames, masks, rate, total
        self.written = 0
        self.write_times: list[float] = []
        self._stop_evt = threading.Event()
        self.results = [make_result(i, frames, masks) for i in range(len(frames))]

    def run(self) -> None:
        seq = 0
        while not self._stop_evt.is_set() and (self.total is None or seq < self.total):
            r = self.results[seq % len(self.results)]
            r.seq = r.frame_index = seq
            r.timestamps = {"capture": time.time() - 0.02, "infer": time.time() - 0.005}
            t0 = time.perf_counter()
            self.sink.write(r)
            self.write_times.append(time.perf_counter() - t0)
            self.written += 1
            seq += 1
            if self.rate:
                time.sleep(1.0 / self.rate)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(10)

    def __enter__(self) -> Feeder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.sink.close()


def stream_info(classes: ClassTable, frame: np.ndarray, stream_id: str = "cam0") -> StreamInfo:
    return StreamInfo(stream_id, frame.shape[1], frame.shape[0], 25.0, classes, live=False)


# A deliberately slow subscriber, run as its own process:
#   python -c SLOW_SUBSCRIBER ENDPOINT MODE DELAY COUNT IDLE
# prints one JSON line: the seqs it got, its gap count and whether it saw the end of the stream.
SLOW_SUBSCRIBER = """
import json, sys, time
from stream.subscriber import Subscriber
endpoint, mode = sys.argv[1], sys.argv[2]
delay, count, idle = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
seqs, classes = [], False
with Subscriber(endpoint, lossless=(mode == "lossless"), credit=4) as sub:
    print("ready", flush=True)
    while len(seqs) < count:
        msg = sub.recv(timeout=idle)
        if msg is None:
            break
        seqs.append(msg.seq)
        classes = classes or msg.classes is not None
        time.sleep(delay)
    print(json.dumps({"seqs": seqs, "gaps": sub.stats.gaps, "ended": sub.stats.ended,
                      "classes": classes}), flush=True)
"""


def slow_subscriber(
    endpoint: str, mode: str, delay: float, count: int, idle: float = 5.0
) -> subprocess.Popen:
    return start_ready(SLOW_SUBSCRIBER, endpoint, mode, delay, count, idle)


class Headers:
    """Every mask header published on a zmq-pub sink, as raw JSON text (for the password grep) and parsed."""

    def __init__(self, port: int) -> None:
        import zmq

        self.raw: list[str] = []
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.setsockopt(zmq.RCVTIMEO, 200)
        self._sock.connect(f"tcp://127.0.0.1:{port}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        while not self._stop.is_set():
            try:
                self.raw.append(self._sock.recv_multipart()[1].decode())
            except zmq.Again:
                continue

    @property
    def parsed(self) -> list[dict]:
        return [json.loads(h) for h in list(self.raw)]

    def wait(self, what, timeout_s: float, proc: subprocess.Popen) -> list[dict]:
        """Headers so far, once ``what(headers)`` holds (fails if the run ends or time runs out first)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and proc.poll() is None:
            hs = self.parsed
            if what(hs):
                return hs
            time.sleep(0.1)
        raise AssertionError(f"waited {timeout_s} s (run exited: {proc.poll()}); {len(self.raw)} headers")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close(linger=0)
