"""Depth as a stream, end to end through real `segstream run` processes: a depth video paired with a colour
video by timestamp (offsets and missing frames counted exactly) and republished with the masks to a Python
and a Node.js subscriber; the synthetic depth source through an RGB-D model, depth in the shared-memory ring
(not inline) on one host, inline with --no-shm, and replayed after a killed stage; bad depth options in
one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import psutil
import pytest

from tests import procs

from .mask_helpers import free_port_block

REPO = Path(__file__).resolve().parents[2]
NODE_CLIENT = REPO / "tools" / "clients" / "node" / "subscribe.js"
torch = pytest.importorskip("torch")
W, H = 64, 48


def segstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return procs.run(*args, timeout=timeout, env=procs.env(OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def rgbd_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-channel convpool whose masks depend strongly on depth (its depth weights scaled up), so a
    run fed the wrong depth, or none, gives other masks."""
    from engines.depth import DepthSpec
    from engines.export import export_onnx
    from engines.meta import ClassTable, ModelMeta
    from engines.models import build_model

    torch.manual_seed(0)
    classes = ClassTable(names=("wall", "near", "far"), palette=((90, 90, 90), (255, 0, 0), (0, 0, 255)))
    net = build_model("convpool", num_classes=3, in_channels=4).eval()
    with torch.no_grad():
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.weight[:, 3] *= 20.0
    meta = ModelMeta(
        arch="convpool",
        classes=classes,
        input_size=(W, H),
        channels=4,
        extra={"arch_args": {"in_channels": 4}, "depth": DepthSpec(max_mm=5000.0).to_dict()},
    )
    path = tmp_path_factory.mktemp("model") / "rgbd.onnx"
    export_onnx(net, meta, path)
    return path


def depth_of_frame(k: int) -> np.ndarray:
    """Depth frame k: a slanted plane whose level says k, a near box that moves, a hole."""
    d = np.fromfunction(lambda y, x: 1500 + 40 * k + 20 * y + 3 * x, (H, W)).astype(np.uint16)
    d[10:30, 2 * k : 2 * k + 16] = 700
    d[0, :5] = 0
    return d


# ------------------------------------------------------------------------------------------------------
# a depth video paired with a colour video by timestamp, republished with the masks


def make_videos(folder: Path, n: int, stamps_ms: dict[int, int]) -> tuple[Path, Path]:
    """colour.mp4: n frames at 10 fps (PTS k * 100 ms); depth.mkv: lossless 16-bit FFV1, depth frame k at
    PTS ``stamps_ms[k]``."""
    colour = folder / "colour.mp4"
    vw = cv2.VideoWriter(str(colour), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    for k in range(n):
        img = np.full((H, W, 3), 40 + 9 * k, np.uint8)
        cv2.rectangle(img, (2 * k, 10), (2 * k + 15, 29), (255, 255, 255), -1)
        vw.write(img)
    vw.release()
    depth = folder / "depth.mkv"
    with av.open(str(depth), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "gray16le"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)  # PTS to the millisecond
        for k, ms in stamps_ms.items():
            f = av.VideoFrame.from_ndarray(depth_of_frame(k), format="gray16le")
            f.pts, f.time_base = ms, Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return colour, depth


def record(endpoint: str, into: list, ready: threading.Event) -> None:
    """A lossless Python subscriber: (frame_index, depth) of every mask until the end message."""
    from stream.subscriber import Subscriber

    with Subscriber(endpoint, lossless=True) as sub:
        ready.set()
        while (msg := sub.recv(timeout=90)) is not None:
            into.append((msg.header["frame_index"], msg.depth, [p["name"] for p in msg.header["parts"]]))


def test_depth_video_pairs_by_timestamp_and_is_published_with_the_masks(
    tmp_path: Path, rgbd_onnx: Path
) -> None:
    n = 20
    # depth 7 ms after each colour frame (within 20 ms); frames 3, 4 and 11 missing; frame 15 45 ms late
    # (beyond the tolerance, and 55 ms before colour frame 16): colour frames 3, 4, 11, 15 are unpaired
    stamps = {k: 100 * k + (45 if k == 15 else 7) for k in range(n) if k not in (3, 4, 11)}
    paired = [k for k in range(n) if k not in (3, 4, 11, 15)]
    colour, depth = make_videos(tmp_path, n, stamps)
    port = free_port_block()
    node = None
    if shutil.which("node") and (NODE_CLIENT.parent / "node_modules" / "zeromq").is_dir():
        node_args = [f"tcp://127.0.0.1:{port}", "--lossless", "--count", "100000", "--timeout", "90"]
        node = subprocess.Popen(["node", str(NODE_CLIENT), *node_args], text=True, stdout=subprocess.PIPE)
    got: list = []
    ready = threading.Event()
    rec = threading.Thread(target=record, args=(f"tcp://127.0.0.1:{port}", got, ready), daemon=True)
    rec.start()
    assert ready.wait(10)
    stats = tmp_path / "stats.json"
    r = segstream(
        "run", str(colour), "--depth", str(depth), "--depth-pairing", "timestamp",
        "--depth-tolerance-ms", "20", "--model", str(rgbd_onnx), "--no-progress", "--stats-json", str(stats),
        "--sink", f"zmq-pub://127.0.0.1:{port}?depth=raw&wait_recorders={1 if node is None else 2}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rec.join(60)
    rep = json.loads(stats.read_text())
    assert rep["frames"] == len(paired) == 16
    assert rep["drops"] == {"unpaired_depth": 4}, rep["drops"]
    cap = rep["stages"]["capture"]["extra"]
    assert cap["depth_paired"] == 16 and cap["depth_in_ring"] == 16 and "depth_inline" not in cap, cap
    # the Python subscriber got every mask with its depth part: the very depth frame paired by timestamp
    assert [i for i, _, _ in got] == paired
    for (i, d, names), k in zip(got, paired, strict=True):
        assert names == ["depth"] and d.dtype == np.uint16
        assert np.array_equal(d, depth_of_frame(k)), f"colour frame {i}"
    if node is not None:
        out, _ = node.communicate(timeout=60)
        assert node.returncode == 0, out
        summary = json.loads(out.splitlines()[-1])
        assert summary["seqs"] == list(range(16)) and summary["ok"], summary["errors"]
        assert summary["depth"]["encoding"] == "raw"
        assert summary["depth"]["sums"] == [int(depth_of_frame(k).astype(np.int64).sum()) for k in paired]
        assert summary["depth"]["valid"] == [int((depth_of_frame(k) > 0).sum()) for k in paired]


def test_published_depth_as_png_at_a_requested_size(tmp_path: Path, rgbd_onnx: Path) -> None:
    """?depth=png: a 16-bit PNG; with ?size= the depth is resized nearest to the mask's size; `segstream
    subscribe --save` writes it as a 16-bit PNG beside the mask."""
    from .mask_helpers import segstream as start

    colour, depth = make_videos(tmp_path, 6, {k: 100 * k for k in range(6)})
    port = free_port_block()
    rec = start("subscribe", f"tcp://127.0.0.1:{port}", "--lossless", "--save", str(tmp_path / "rec"),
                "--timeout", "90", "--quiet")  # fmt: skip
    r = segstream(
        "run", str(colour), "--depth", f"file:{depth}", "--model", str(rgbd_onnx), "--no-progress",
        "--sink", f"zmq-pub://127.0.0.1:{port}?depth=png&size=32x24&wait_recorders=1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    _, err = rec.communicate(timeout=60)
    assert rec.returncode == 0, err
    for k in range(6):
        hdr = json.loads((tmp_path / "rec" / f"{k:08d}.json").read_text())
        assert hdr["parts"] == [{"name": "depth", "encoding": "png", "bytes": hdr["parts"][0]["bytes"]}]
        d = cv2.imread(str(tmp_path / "rec" / f"{k:08d}_depth.png"), cv2.IMREAD_UNCHANGED)
        want = cv2.resize(depth_of_frame(k), (32, 24), interpolation=cv2.INTER_NEAREST)
        assert d.dtype == np.uint16 and np.array_equal(d, want)


# ------------------------------------------------------------------------------------------------------
# the synthetic depth source through an RGB-D model; ring vs inline; replay after a killed stage

N_SYNTH = 240
COLOUR = f"synthetic://?size={W}x{H}&fps=30&frames={N_SYNTH}&live=0"
DEPTH = f"synthetic://?size={W}x{H}&fps=30"


def masks_of(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((folder / "mask").glob("*.png"))]


def run_synthetic(tmp: Path, model: Path, name: str, *extra: str, depth: str = DEPTH) -> tuple[dict, list]:
    out, stats = tmp / name, tmp / f"{name}.json"
    r = segstream(
        "run", COLOUR, "--depth", depth, "--model", str(model), "--no-progress", "--stats-json", str(stats),
        "--sink", f"images:{out}?what=mask", *extra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(stats.read_text()), masks_of(out)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, rgbd_onnx: Path) -> tuple[dict, list]:
    return run_synthetic(tmp_path_factory.mktemp("clean"), rgbd_onnx, "ring")


def test_synthetic_depth_runs_through_the_ring(tmp_path: Path, rgbd_onnx: Path, clean_run) -> None:
    rep, masks = clean_run
    assert rep["frames"] == N_SYNTH and len(masks) == N_SYNTH and not rep["drops"]
    cap = rep["stages"]["capture"]["extra"]
    # one host: every depth image went through the ring's depth region, none inline in a message
    assert cap["depth_in_ring"] == N_SYNTH and "depth_inline" not in cap, cap
    # the same depth frames written as PNGs, read by the folder source, paired by index: the same masks
    from stream.sources.depth import open_depth

    folder = tmp_path / "depth"
    folder.mkdir()
    src = open_depth(DEPTH)
    src.open(live=False)
    for k in range(24):
        cv2.imwrite(str(folder / f"d{k:04d}.png"), src.read().depth)
    rep2, masks2 = run_synthetic(tmp_path, rgbd_onnx, "folder", depth=str(folder))
    assert rep2["frames"] == 24 and rep2["drops"] == {"unpaired_depth": N_SYNTH - 24}
    assert all(np.array_equal(a, b) for a, b in zip(masks2, masks[:24], strict=True))
    # --no-shm: depth inline in the messages, same masks, and it still reaches the publisher
    port, published = free_port_block(), []
    t = threading.Thread(target=record, args=(f"tcp://127.0.0.1:{port}", published, threading.Event()))
    t.start()
    rep3, masks3 = run_synthetic(
        tmp_path, rgbd_onnx, "inline", "--no-shm", "--max-frames", "24",
        "--sink", f"zmq-pub://127.0.0.1:{port}?depth=raw&wait_recorders=1",
    )  # fmt: skip
    t.join(60)
    assert rep3["stages"]["capture"]["extra"]["depth_inline"] == 24
    assert "depth_in_ring" not in rep3["stages"]["capture"]["extra"]
    assert all(np.array_equal(a, b) for a, b in zip(masks3, masks[:24], strict=True))
    src = open_depth(DEPTH)
    src.open(live=False)
    assert [i for i, _, _ in published] == list(range(24))
    assert all(np.array_equal(d, src.read().depth) for _, d, _ in published)
    # another depth (the box farther): other masks
    far = DEPTH + "&near_mm=2900&far_mm=5000"
    _, masks4 = run_synthetic(tmp_path, rgbd_onnx, "far", "--max-frames", "24", depth=far)
    assert sum(not np.array_equal(a, b) for a, b in zip(masks4, masks[:24], strict=True)) >= 12


def test_depth_in_the_ring_is_replayed_after_a_killed_preprocess(tmp_path: Path, rgbd_onnx: Path, clean_run):
    """Frames in flight when preprocess dies are replayed from their ring slots, depth included: a file
    run loses none, and every mask is the one the undisturbed run made."""
    _, clean = clean_run
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    p = subprocess.Popen(
        [
            sys.executable, "-m", "stream", "run", COLOUR, "--depth", DEPTH, "--model", str(rgbd_onnx),
            "--no-progress", "--stats-json", str(stats), "--sink", f"images:{out}?what=mask",
            "--threads", "1", "--slots", "4",
        ],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        victim = None
        deadline = time.monotonic() + 90
        while victim is None and time.monotonic() < deadline:
            if (out / "mask").is_dir() and any((out / "mask").iterdir()):  # frames are moving
                victim = next(
                    (
                        c
                        for c in psutil.Process(p.pid).children(recursive=True)
                        if "worker preprocess" in " ".join(c.cmdline())
                    ),
                    None,
                )
            time.sleep(0.02)
        assert victim is not None, "no preprocess stage while frames were moving"
        victim.kill()
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    rep = json.loads(stats.read_text())
    assert rep["restarts"].get("preprocess") == 1, (rep["restarts"], err)
    assert rep["frames"] == N_SYNTH and not rep["drops"].get("lost"), rep["drops"]
    masks = masks_of(out)
    assert len(masks) == N_SYNTH and all(np.array_equal(a, b) for a, b in zip(masks, clean, strict=True))


# ------------------------------------------------------------------------------------------------------
# user mistakes: one line, non-zero exit, before any stage starts


def test_bad_depth_options_are_one_line(tmp_path: Path, rgbd_onnx: Path, onnx_model: Path) -> None:
    levels = np.zeros((H, W), np.uint8)
    with av.open(str(tmp_path / "d8.mkv"), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "gray"
        for pk in [*s.encode(av.VideoFrame.from_ndarray(levels, format="gray")), *s.encode()]:
            c.mux(pk)
    (tmp_path / "plain").mkdir()
    cv2.imwrite(str(tmp_path / "plain" / "a.png"), depth_of_frame(0))
    model = ["--model", str(rgbd_onnx), "--sink", f"images:{tmp_path / 'o'}"]
    cases = [
        (["--depth", str(tmp_path / "d8.mkv")], "8-bit depth video (gray) needs ?max_mm=M"),
        (["--depth", f"{tmp_path / 'd8.mkv'}?scale_mm=0"], "option scale_mm='0'"),
        (["--depth", str(tmp_path / "plain"), "--depth-pairing", "timestamp"], "no timestamps"),
        (["--depth", DEPTH, "--depth-tolerance-ms", "-3"], "config key 'depth_tolerance_ms' = -3.0"),
        (["--depth", DEPTH, "--sink", "zmq-pub://127.0.0.1:1?depth=jpeg"], "depth=jpeg"),
    ]
    for args, expect in cases:
        r = segstream("run", COLOUR, *model, *args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert expect in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # an RGB model's run cannot republish depth it does not have
    r = segstream("run", COLOUR, "--model", str(onnx_model), "--sink", "zmq-pub://127.0.0.1:1?depth=raw")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "republishes depth (?depth=) but the run has no --depth" in r.stderr


def test_live_colour_and_live_depth_pair_by_arrival_time(tmp_path: Path, rgbd_onnx: Path) -> None:
    """Both synthetic sources live (paced at 30 fps): each colour frame pairs with the depth frame that
    arrived nearest to it, within the tolerance."""
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    r = segstream(
        "run", f"synthetic://?size={W}x{H}&fps=30&frames=45", "--depth", f"synthetic:?size={W}x{H}&fps=30",
        "--depth-pairing", "timestamp", "--depth-tolerance-ms", "20", "--model", str(rgbd_onnx),
        "--no-progress", "--stats-json", str(stats), "--sink", f"images:{out}?what=mask",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(stats.read_text())
    assert rep["frames"] > 0 and rep["frames"] + sum(rep["drops"].values()) == 45, rep["drops"]
    assert "unpaired_depth" not in rep["drops"]
    assert rep["stages"]["capture"]["extra"]["depth_paired"] == rep["frames"] == len(masks_of(out))


def test_remote_infer_worker_gets_the_rgbd_input_inline(tmp_path: Path, rgbd_onnx: Path, clean_run) -> None:
    """Across hosts (a `segstream worker infer` on tcp): the prepared RGB-D input travels inline, the same
    masks come back, and the published depth still comes from this host's ring."""
    from stream.sources.depth import open_depth
    from stream.subscriber import Subscriber
    from stream.transport import free_tcp_port

    _, clean = clean_run
    p_in, p_out, port = free_tcp_port(), free_tcp_port(), free_port_block()
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker", "infer", "--in", f"tcp://127.0.0.1:{p_in}",
         "--out", f"tcp://127.0.0.1:{p_out}", "--model", str(rgbd_onnx), "--threads", "1"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    got: list = []

    def rec() -> None:
        with Subscriber(f"tcp://127.0.0.1:{port}", lossless=True) as sub:
            while (msg := sub.recv(timeout=90)) is not None:
                got.append(msg.depth)

    t = threading.Thread(target=rec, daemon=True)
    t.start()
    try:
        out, stats = tmp_path / "out", tmp_path / "stats.json"
        r = segstream(
            "run", COLOUR, "--depth", DEPTH, "--model", str(rgbd_onnx), "--max-frames", "30", "--no-progress",
            "--workers", "0", "--remote-infer", f"tcp://127.0.0.1:{p_in}", f"tcp://127.0.0.1:{p_out}",
            "--insecure", "--stats-json", str(stats), "--sink", f"images:{out}?what=mask",
            "--sink", f"zmq-pub://127.0.0.1:{port}?depth=raw&wait_recorders=1",
        )  # fmt: skip
    finally:
        worker.kill()
        worker.wait()
    assert r.returncode == 0, r.stderr
    t.join(60)
    masks = masks_of(out)
    assert len(masks) == 30 and all(np.array_equal(a, b) for a, b in zip(masks, clean[:30], strict=True))
    src = open_depth(DEPTH)
    src.open(live=False)
    assert len(got) == 30 and all(np.array_equal(d, src.read().depth) for d in got)


def test_a_broken_depth_file_mid_run_ends_the_run_in_one_line(tmp_path: Path, rgbd_onnx: Path) -> None:
    """Depth frame 3 is an 8-bit PNG: the run stops there with one line naming the file and a non-zero
    exit, and the masks of frames 0-2 are written."""
    (tmp_path / "d").mkdir()
    for k in range(6):
        cv2.imwrite(
            str(tmp_path / "d" / f"d{k}.png"), depth_of_frame(k) if k != 3 else np.zeros((H, W), np.uint8)
        )
    out = tmp_path / "out"
    r = segstream(
        "run", f"synthetic://?size={W}x{H}&fps=30&frames=6&live=0", "--depth", str(tmp_path / "d"),
        "--model", str(rgbd_onnx), "--no-progress", "--sink", f"images:{out}?what=mask",
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "d3.png: depth must be a single-channel 16-bit PNG" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert len(masks_of(out)) == 3
