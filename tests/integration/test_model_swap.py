"""Swapping the model of a running pipeline (issue 17 item 4): real runs, real processes and sockets.

* A lossless file run is swapped mid-run from one tiny real ONNX model to another with clearly different
  output; a corrupt model file is refused first and changes nothing. Every frame is written exactly
  once, the masks before the reply's switch seq are the first model's and from it on the second's.
* A live (paced) run publishing masks is swapped to a model with another class table while a real
  subscriber (stream.subscriber, lossless) and a client speaking docs/PROTOCOL.md section 7 watch: the
  digest changes exactly at the switch seq, both fetch the new names and colours, no seq is missing,
  and the gap between the published frames around the switch is at most one frame interval plus a
  stated tolerance (measured from the headers' publish timestamps, and matching the reply's gap).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.meta import ClassTable
from stream.transport import free_tcp_port
from tests import procs
from tests.integration.mask_helpers import free_port_block
from tests.unit.tiling_models import ColorNet, _meta, color_model, export

pytestmark = pytest.mark.timeout(180)


def rotated_model(root: Path) -> Path:
    """ColorNet with its classes rotated: same class table, a different class for every pure pixel."""
    net = ColorNet()
    with torch.no_grad():
        net.conv.weight.copy_(net.conv.weight[[1, 2, 0]])
    meta = _meta(["red", "green", "blue"], [[255, 0, 0], [0, 255, 0], [0, 0, 255]], "colornet-rot")
    return export(net, meta, root / "colornet-rot.onnx")


NEW_NAMES = ["sunset", "forest", "ocean"]
NEW_PALETTE = [[250, 120, 20], [10, 120, 40], [20, 60, 200]]


def relabelled_model(root: Path) -> Path:
    """ColorNet (rotated) with another class table: other names and colours, so another digest."""
    net = ColorNet()
    with torch.no_grad():
        net.conv.weight.copy_(net.conv.weight[[2, 0, 1]])
    return export(net, _meta(NEW_NAMES, NEW_PALETTE, "colornet-relabelled"), root / "colornet-new.onnx")


def ctl(*args: str) -> subprocess.CompletedProcess:
    return procs.run("streams", *args, timeout=300)


def offline(model: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    from engines.runtime import load
    from engines.runtime.preprocess import resize_to

    rt = load(str(model), device="cpu", threads=1)
    try:
        return [resize_to(rt.run(rt.prepare([f]))[0][0], f.shape[:2], nearest=True) for f in frames]
    finally:
        rt.close()


def test_file_run_swapped_mid_run(tmp_path, avi_clip):
    a, b = color_model(tmp_path), rotated_model(tmp_path)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07" + b"not a model" * 50)
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    p = procs.start(
        "run", avi_clip.path, "--model", a, "--threads", "1", "--no-progress",
        "--sink", "images:out?what=mask", "--control", url, "--stats-json", "stats.json",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        masks = tmp_path / "out" / "mask"
        end = time.monotonic() + 90
        while time.monotonic() < end and len(list(masks.glob("*.png"))) < 40:
            assert p.poll() is None, p.communicate()[1]
            time.sleep(0.1)
        bad = ctl("model", str(corrupt), "--control", url)
        assert bad.returncode != 0
        assert "corrupt.onnx" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "Traceback" not in bad.stderr
        ok = ctl("model", str(b), "--control", url, "--json")
        assert ok.returncode == 0, ok.stderr
        reply = json.loads(ok.stdout)
        out, err = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    seq = reply["seq"]
    assert 40 <= seq < avi_clip.frames, reply
    # every frame written exactly once
    names = sorted(masks.glob("*.png"))
    assert [int(n.stem) for n in names] == list(range(avi_clip.frames))
    cap = cv2.VideoCapture(str(avi_clip.path))
    frames = []
    while True:
        ok_, f = cap.read()
        if not ok_:
            break
        frames.append(f)
    assert len(frames) == avi_clip.frames
    # frames around the switch, and a spread on both sides (offline inference of all 663 costs seconds)
    idx = sorted({*range(max(0, seq - 5), min(len(frames), seq + 5)), 0, seq // 2, len(frames) - 1})
    pa, pb = offline(a, [frames[i] for i in idx]), offline(b, [frames[i] for i in idx])
    for i, ma, mb in zip(idx, pa, pb, strict=True):
        got = cv2.imread(str(masks / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        agree_a, agree_b = float((got == ma).mean()), float((got == mb).mean())
        want, other = (agree_a, agree_b) if i < seq else (agree_b, agree_a)
        assert want > 0.98 and other < 0.5, (i, seq, agree_a, agree_b)
    stats = json.loads((tmp_path / "stats.json").read_text())
    (swap,) = stats["swaps"]
    assert swap["seq"] == seq and swap["model"] == str(b) and swap["gap_ms"] is not None
    print(f"\nfile swap at seq {seq}: gap {swap['gap_ms']} ms, new workers warm in {swap['warm_s']} s")


def fetch_classes_documented(port: int) -> dict:
    """docs/PROTOCOL.md section 7, by hand: REQ 'classes' to PORT+1, check the digest of the reply."""
    import zmq

    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(f"tcp://127.0.0.1:{port + 1}")
        req.send(b"classes")
        assert req.poll(5000), "no class-table reply within 5 s"
        reply = json.loads(req.recv())
    finally:
        req.close()
        ctx.term()
    canonical = json.dumps(reply["classes"], sort_keys=True, separators=(",", ":")).encode()
    assert reply["digest"] == hashlib.sha256(canonical).hexdigest()[:16]
    return reply


class Collector(threading.Thread):
    """A lossless stream.subscriber in a thread: every message's seq, header and class table."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        from stream.subscriber import Subscriber

        self.sub = Subscriber(endpoint, lossless=True)
        self.got: dict[int, tuple[dict, ClassTable | None]] = {}
        self.stop_evt = threading.Event()

    def run(self) -> None:
        while not self.stop_evt.is_set():
            msg = self.sub.recv(timeout=0.2)
            if msg is not None:
                self.got[msg.seq] = (msg.header, msg.classes)

    def wait_for(self, pred, timeout: float, proc: subprocess.Popen) -> None:
        end = time.monotonic() + timeout
        while not pred():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < end, f"timed out; got seqs up to {max(self.got, default=None)}"
            time.sleep(0.05)

    def close(self) -> None:
        self.stop_evt.set()
        self.join(5)
        self.sub.close()


FPS = 10.0  # the live source's rate: one frame interval is 100 ms
# Allowed on top of one interval: half an interval. The swap must not cost a frame (that would be a
# gap of two intervals, 200 ms, and fail); what is allowed is the jitter of a paced run's output on
# this shared 2-core machine, where a frame's capture->publish latency varies by tens of ms from one
# frame to the next under load (the fresh workers also compete for the cores while they warm up).
GAP_TOLERANCE_S = 0.5 / FPS


def names_colours(table: ClassTable) -> tuple[list[str], list[list[int]]]:
    return list(table.names), [list(c) for c in table.palette]


def test_live_run_swapped_to_another_class_table(tmp_path):
    a, b = color_model(tmp_path), relabelled_model(tmp_path)
    old_table = ClassTable(names=["red", "green", "blue"], palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    new_table = ClassTable(names=NEW_NAMES, palette=NEW_PALETTE)
    assert old_table.digest() != new_table.digest()
    port = free_port_block(3)
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    p = procs.start(
        "run", f"synthetic://?size=160x120&fps={FPS:g}", "--model", a, "--threads", "1",
        "--no-progress", "--control", url, "--stats-json", "stats.json",
        "--sink", f"zmq-pub://127.0.0.1:{port}?lossless=on",
        cwd=tmp_path,
    )  # fmt: skip
    sub = None
    try:
        # the publisher binds once the stages are up; the lossless subscriber may connect before
        sub = Collector(f"tcp://127.0.0.1:{port}")
        sub.start()
        sub.wait_for(lambda: len(sub.got) >= 10, 90, p)
        requested = time.time()
        ok = ctl("model", str(b), "--control", url, "--json")
        assert ok.returncode == 0, ok.stderr
        reply = json.loads(ok.stdout)
        seq = reply["seq"]
        sub.wait_for(lambda: max(sub.got) >= seq + 10, 30, p)
        documented = fetch_classes_documented(port)
    finally:
        if sub is not None:
            sub.close()
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    assert p.returncode == 0, err[-3000:]
    got = sub.got
    # lossless and live: every seq from the first received one to the switch + 10, none missing
    seqs = sorted(got)
    assert seqs[0] < seq - 5 and seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
    # the digest changes exactly at the switch seq, and the subscriber re-fetched the table there
    for s in seqs:
        header, table = got[s]
        want = old_table if s < seq else new_table
        assert header["classes_digest"] == want.digest(), (s, seq)
        assert table is not None and names_colours(table) == names_colours(want), (s, seq)
    assert sub.sub.stats.classes_fetches >= 2
    # ... and a client speaking the documented protocol gets the new table too
    assert documented["digest"] == new_table.digest()
    assert documented["classes"]["names"] == NEW_NAMES
    assert documented["classes"]["palette"] == NEW_PALETTE
    # the gap at the switch, from the publish timestamps the subscriber received: the first frame of
    # the new model follows the last of the old one within an interval (+ tolerance), and so does the
    # next one (the new workers keep pace)
    interval = 1.0 / FPS
    publish = {s: got[s][0]["timestamps"]["publish"] for s in seqs}
    gap, after = publish[seq] - publish[seq - 1], publish[seq + 1] - publish[seq]
    warm = [publish[s] - publish[s - 1] for s in seqs[1:] if publish[s] > requested and s <= seq]
    print(
        f"\nlive swap at seq {seq}: gap {1000 * gap:.1f} ms (reply {reply['gap_ms']} ms), next "
        f"{1000 * after:.1f} ms, interval {1000 * interval:.0f} ms; longest gap between the request "
        f"and the switch {1000 * max(warm, default=0):.1f} ms over {len(warm)} frames"
    )
    assert gap <= interval + GAP_TOLERANCE_S, (gap, after)
    assert after <= interval + GAP_TOLERANCE_S, (gap, after)
    # the reply's gap is measured on the overlay's clock between the same two output frames
    assert reply["gap_ms"] is not None and abs(reply["gap_ms"] / 1000 - gap) <= 0.025, (reply, gap)
    stats = json.loads((tmp_path / "stats.json").read_text())
    (swap,) = stats["swaps"]
    assert swap["seq"] == seq and swap["model"] == str(b)
