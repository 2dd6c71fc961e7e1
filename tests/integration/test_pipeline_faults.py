"""Pipeline faults found by trying the landed code as an outsider would (issue 10, sections 2 and 3).

Real processes, sockets, shared memory and files throughout: frames larger than 1080p, a remote infer
worker killed mid-run, Ctrl-C during start-up, a restarted overlay on a live source, a stalled overlay on a
file, errors that need no stage, a whole process group killed, junk on the remote results port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.procs import env, finish, frames_in, run, stage_processes, start, wait_for_output, wait_for_stage

pytestmark = pytest.mark.timeout(240)

# a file-like source (never drops, ends at its last frame) far longer than any test lets it run
ENDLESS_FILE = "synthetic://?size=320x240&fps=30&frames=100000&live=0"


def run_args(source: Path | str, model: Path, *options: str) -> list[str]:
    return ["run", str(source), "--model", str(model), "--no-progress", "--threads", "1", *options]


def video_size(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height


def infer_worker(model: Path, p_in: int, p_out: int, cwd: Path) -> subprocess.Popen:
    args = ["worker", "infer", "--in", f"tcp://127.0.0.1:{p_in}", "--out", f"tcp://127.0.0.1:{p_out}"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return start(*args, "--model", model, "--threads", "1", cwd=cwd, **quiet)


def in_order(out: Path, n: int, source: str) -> None:
    """Every output frame is the source frame at its own position (overlay opacity 0, lossless x264):
    closer to it than to its neighbours, so a lost, repeated or swapped frame fails."""
    import av

    from stream.uri import open_source

    src = open_source(source)
    src.open()
    with av.open(str(out)) as c:
        got = [f.to_ndarray(format="bgr24").astype(np.float32) for f in c.decode(video=0)]
    assert len(got) == n
    ref = [src.render(i).astype(np.float32) for i in range(n)]
    for i, g in enumerate(got):
        near = range(max(0, i - 3), min(n, i + 4))
        errs = {j: float(((ref[j] - g) ** 2).mean()) for j in near}
        assert min(errs, key=errs.get) == i, f"output frame {i} looks like source frame(s) {errs}"


# -- a. frames larger than 1080p ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "n"), [("1920x1200", 12), ("3840x2160", 6)])
def test_frames_larger_than_1080p_are_segmented(tmp_path, onnx_model, size, n):
    out = tmp_path / "big.mp4"
    stats = tmp_path / "stats.json"
    args = run_args(f"synthetic://?size={size}&fps=10&frames={n}", onnx_model, "--sink", str(out))
    p = start(*args, "--stats-json", stats, cwd=tmp_path)
    stdout, stderr = finish(p, 180)
    assert p.returncode == 0, stderr
    assert frames_in(out) == n
    assert video_size(out) == tuple(int(v) for v in size.split("x"))
    rep = json.loads(stats.read_text())
    assert rep["frames"] == n and not rep["drops"]


def test_frames_larger_than_their_ring_slot_travel_inline(tmp_path, onnx_model):
    """An image folder whose first image is small sizes the ring for it; the larger ones after it cannot
    use their slot's frame region and must travel inline, through every stage, in order."""
    import cv2

    sizes = [(320, 240), (320, 240), (1920, 1200), (320, 240), (2560, 1440), (2560, 1440), (640, 480)]
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate(sizes):
        cv2.imwrite(str(folder / f"f{i:02d}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    stats = tmp_path / "stats.json"
    args = run_args(folder, onnx_model, "--sink", f"images:{tmp_path / 'out'}?what=frame,mask")
    p = start(*args, "--stats-json", stats, cwd=tmp_path)
    stdout, stderr = finish(p, 120)
    assert p.returncode == 0, stderr
    rep = json.loads(stats.read_text())
    assert rep["frames"] == len(sizes)
    assert rep["stages"]["capture"]["extra"]["inline"] == 4  # every one larger than the first
    for i, (w, h) in enumerate(sizes):
        frame = cv2.imread(str(tmp_path / "out" / "frame" / f"{i:06d}.png"))
        assert np.array_equal(frame, cv2.imread(str(folder / f"f{i:02d}.png"))), f"frame {i} differs"
        mask = cv2.imread(str(tmp_path / "out" / "mask" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w)


# -- b. a remote infer worker that dies ---------------------------------------------------------------------


def remote_run(tmp_path: Path, model: Path, p_in: int, p_out: int, source: str, *options: str):
    out = tmp_path / "out.mp4"
    stats = tmp_path / "stats.json"
    args = run_args(source, model, "--sink", f"file:{out}?crf=0", "--opacity", "0")
    args += ["--stats-json", str(stats), "--workers", "0"]
    args += ["--remote-infer", f"tcp://127.0.0.1:{p_in}", f"tcp://127.0.0.1:{p_out}", *options]
    return start(*args, cwd=tmp_path), out, stats


def test_frames_of_a_killed_remote_worker_are_resent_to_its_replacement(tmp_path, onnx_model):
    from stream.transport import free_tcp_port

    n = 300
    source = f"synthetic://?size=320x240&fps=30&frames={n}&live=0"
    p_in, p_out = free_tcp_port(), free_tcp_port()
    first = infer_worker(onnx_model, p_in, p_out, tmp_path)
    second = None
    try:
        p, out, stats = remote_run(tmp_path, onnx_model, p_in, p_out, source)
        wait_for_output(out, p)
        first.kill()  # with frames in flight: the run cannot go on without a worker
        first.wait()
        assert p.poll() is None, "the run ended before the worker could be killed: raise n"
        second = infer_worker(onnx_model, p_in, p_out, tmp_path)
        stdout, stderr = finish(p, 150)
    finally:
        for w in (first, second):
            if w is not None:
                w.kill()
                w.wait()
    assert p.returncode == 0, stderr
    assert "went away" in stderr
    rep = json.loads(stats.read_text())
    assert rep["frames"] == n and not rep["drops"].get("lost"), rep["drops"]
    assert rep["stages"]["capture"]["extra"]["replays"] >= 1
    in_order(out, n, source)


def test_no_remote_worker_left_ends_the_run_with_a_clear_error(tmp_path, onnx_model):
    from stream.transport import free_tcp_port

    p_in, p_out = free_tcp_port(), free_tcp_port()
    worker = infer_worker(onnx_model, p_in, p_out, tmp_path)
    try:
        p, out, _ = remote_run(tmp_path, onnx_model, p_in, p_out, ENDLESS_FILE, "--remote-timeout", "4")
        wait_for_output(out, p)
        worker.kill()
        worker.wait()
        t_kill = time.monotonic()
        stdout, stderr = finish(p, 90)
        waited = time.monotonic() - t_kill
    finally:
        worker.kill()
        worker.wait()
    assert p.returncode == 1, stderr
    assert re.search(r"error: no result from any infer worker for \d+ s", stderr), stderr
    assert f"127.0.0.1:{p_in}" in stderr
    assert "Traceback" not in stderr
    assert waited < 40
    assert frames_in(out) > 0  # what was written before is kept, finalized


# -- c. Ctrl-C during start-up ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["group", "supervisor"])
def test_ctrl_c_at_any_moment_of_start_up_stops_promptly(tmp_path, onnx_model, target):
    """SIGINT to the whole process group (a terminal's Ctrl-C) or to the supervisor alone, at several
    moments between the stages appearing and frames moving: every run ends within seconds, and 'wrote'
    names only a file that exists and plays with the frame count the summary gives."""
    codes = []
    for delay in (0.0, 0.3, 0.7, 1.2, 2.0, 3.0, "first frame"):
        out = tmp_path / f"out-{delay}.mp4"
        p = start(
            *run_args(ENDLESS_FILE, onnx_model, "--sink", str(out)), cwd=tmp_path, start_new_session=True
        )
        wait_for_stage(p.pid, "capture")
        if delay == "first frame":  # frames are moving: the drain path, which must write the file
            wait_for_output(out, p)
        else:
            time.sleep(delay)
        children = stage_processes(p.pid)
        t0 = time.monotonic()
        if target == "group":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGINT)
        stdout, stderr = finish(p, 60)
        took = time.monotonic() - t0
        assert took < 20, f"SIGINT {delay} s after start-up took {took:.1f} s to stop"
        assert "Traceback" not in stderr, stderr
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"stages left running: {alive}"
        if p.returncode == 130:
            assert "no output" in stderr and not out.exists(), (delay, stdout, stderr)
        else:
            assert p.returncode == 0, (delay, stderr)
            assert f"wrote {out}" in stdout, (delay, stdout)
            frames = int(stdout.split(" frames")[0])
            assert frames > 0 and frames_in(out) == frames
        assert "wrote" not in stdout or out.exists()
        codes.append(p.returncode)
    assert codes[-1] == 0, "the run interrupted after its first frame must have written it"


# -- d. a restarted overlay on a live source ---------------------------------------------------------------


def test_restarted_overlay_on_a_live_source_rolls_to_a_new_segment(tmp_path, onnx_model):
    out = tmp_path / "live.mp4"
    stats = tmp_path / "stats.json"
    args = run_args("synthetic://?size=320x240&fps=20&frames=200", onnx_model, "--sink", str(out))
    p = start(*args, "--stats-json", stats, cwd=tmp_path)
    overlay = wait_for_stage(p.pid, "overlay")
    wait_for_output(out, p)
    time.sleep(1.0)
    overlay.terminate()  # exits through its SIGTERM path (finalizing its file); live: restarted
    stdout, stderr = finish(p, 120)
    assert p.returncode == 0, stderr
    second = tmp_path / "live.001.mp4"
    assert "output continues in" in stderr and str(second.name) in stderr, stderr
    rep = json.loads(stats.read_text())
    assert rep["restarts"] == {"overlay": 1}
    first_n, second_n = frames_in(out), frames_in(second)
    assert first_n > 0 and second_n > 0
    assert rep["frames"] == first_n + second_n
    assert f"{rep['frames']} frames" in stdout
    assert f"wrote {out}" in stdout and f"wrote {second}" in stdout


# -- e. a stalled stage is stopped with SIGTERM first -------------------------------------------------------


def test_stalled_overlay_on_a_file_leaves_a_playable_mp4(tmp_path, onnx_model):
    out = tmp_path / "out.mp4"
    p = start(*run_args(ENDLESS_FILE, onnx_model, "--sink", str(out), "--stall-timeout", "2"), cwd=tmp_path)
    overlay = wait_for_stage(p.pid, "overlay")
    wait_for_output(out, p)
    overlay.suspend()  # alive but silent: only the heartbeat timeout finds it
    stdout, stderr = finish(p, 60)
    assert p.returncode == 1, stderr
    assert "overlay" in stderr and "sent no heartbeat" in stderr
    assert frames_in(out) > 0  # SIGKILL at once left an mp4 without its index


# -- f. errors that need no stage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "expect"),
    [
        ("missing-input", "file not found"),
        ("unwritable-sink", "is not a folder"),
        ("image-folder-is-a-file", "is a file, not a folder"),
        ("image-folder-under-a-file", "is not a folder"),
    ],
)
def test_errors_that_need_no_stage_come_before_any_stage(tmp_path, onnx_model, what, expect):
    (tmp_path / "plain-file").write_text("not a folder")
    source, sink = "synthetic://?frames=5", str(tmp_path / "out.mp4")
    if what == "missing-input":
        source = str(tmp_path / "missing.mp4")
    elif what == "unwritable-sink":
        sink = str(tmp_path / "plain-file" / "out.mp4")
    elif what == "image-folder-is-a-file":
        sink = f"images:{tmp_path / 'plain-file'}?what=mask"
    else:
        sink = f"images:{tmp_path / 'plain-file' / 'frames'}?what=mask"
    t0 = time.monotonic()
    p = start(*run_args(source, onnx_model, "--sink", sink), cwd=tmp_path)
    seen = []
    while p.poll() is None:  # a stage takes far longer than one poll to start: none can slip by
        seen += [c.pid for c in stage_processes(p.pid)]
        time.sleep(0.01)
    took = time.monotonic() - t0
    stdout, stderr = p.communicate()
    assert not seen, "a stage process was started for an error that needs none"
    assert p.returncode == 2
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], stderr
    assert took < 10, f"took {took:.1f} s"


# -- g. a whole process group killed ------------------------------------------------------------------------


def test_next_run_removes_what_a_killed_process_group_left(tmp_path, onnx_model):
    tmp = Path(tempfile.mkdtemp(prefix="ss-"))  # short: the ipc sockets live in the run folder
    try:
        e = env(TMPDIR=str(tmp))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        p = start(
            *run_args(ENDLESS_FILE, onnx_model, "--sink", str(tmp_path / "a.mp4")),
            cwd=tmp_path,
            env=e,
            start_new_session=True,
            **quiet,
        )
        wait_for_output(tmp_path / "a.mp4", p)
        left = list(tmp.glob("segstream-run-*"))
        segments = {n for n in os.listdir("/dev/shm") if n.startswith(f"segstream-{p.pid}-")}
        assert left and segments
        procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        # kill -9 of the whole group: supervisor, stages and resource tracker at once, nobody cleans up
        os.killpg(p.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        p.wait()
        assert all(d.exists() for d in left)
        r = run(
            *run_args("synthetic://?frames=2", onnx_model, "--sink", str(tmp_path / "b.mp4")),
            cwd=tmp_path,
            env=e,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert not any(d.exists() for d in left), "the orphaned run folder is still there"
        assert not list(tmp.glob("segstream-run-*"))
        assert not segments & set(os.listdir("/dev/shm"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- h. junk on the remote results port ---------------------------------------------------------------------


def test_malformed_messages_on_the_results_port_are_counted_and_dropped(tmp_path, onnx_model):
    import zmq

    from stream import headers as H
    from stream.transport import free_tcp_port

    n = 40
    p_in, p_out = free_tcp_port(), free_tcp_port()
    worker = infer_worker(onnx_model, p_in, p_out, tmp_path)
    zctx = zmq.Context()
    rogue = zctx.socket(zmq.PUSH)
    rogue.setsockopt(zmq.LINGER, 2000)
    try:
        source = f"synthetic://?size=320x240&fps=30&frames={n}&live=0"
        p, out, stats = remote_run(tmp_path, onnx_model, p_in, p_out, source)
        rogue.connect(f"tcp://127.0.0.1:{p_out}")
        mask = np.zeros((120, 160), np.uint8)
        junk = [
            [b"not json at all"],
            [b'{"v": 1}'],  # JSON, not a header
            [b"\xff\xfe" * 10],
            H.encode(H.FrameHeader(seq=1)),  # a header with no mask
            H.encode(H.FrameHeader(seq=10**12), {"mask": mask}),  # far beyond anything in flight
            H.encode(H.FrameHeader(kind=H.EOS, seq=-5)),
            [H.encode(H.FrameHeader(seq=2), {"mask": mask})[0]],  # announces a part it lacks
        ]
        for msg in junk:
            rogue.send_multipart(msg)
        stdout, stderr = finish(p, 150)
    finally:
        rogue.close()
        zctx.term()
        worker.kill()
        worker.wait()
    assert p.returncode == 0, stderr
    rep = json.loads(stats.read_text())
    assert rep["stages"]["overlay"]["extra"]["malformed"] == len(junk)
    assert f"malformed messages dropped: overlay {len(junk)}" in stdout
    assert rep["frames"] == n
    in_order(out, n, source)
