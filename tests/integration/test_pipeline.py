"""The real multi-process pipeline: real processes, sockets, shared memory, clips and mp4 files.

Small on purpose (prefixes of a 480x270 clip made from the bundled one, a 160x120 model) so the whole
file stays well under 4 minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.procs import frames_in, run, stage_processes, start, wait_for_output, wait_for_stage

pytestmark = pytest.mark.timeout(150)


def run_args(source: Path | str, model: Path, *options: str) -> list[str]:
    """``run SOURCE --model MODEL OPTIONS...``: the pipeline command every test starts from."""
    return ["run", str(source), "--model", str(model), *options]


def shm_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("segstream-")}


def decode(path: Path, limit: int | None = None) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            if limit is not None and len(out) >= limit:
                break
            out.append(f.to_ndarray(format="bgr24"))
    return out


def assert_in_order(output: list[np.ndarray], source: list[np.ndarray]) -> None:
    """Each output frame is closest to the source frame at its own position (opacity 0 overlay)."""
    src = np.stack(source).astype(np.float32)
    for i, f in enumerate(output):
        mse = ((src - f.astype(np.float32)) ** 2).mean(axis=(1, 2, 3))
        assert mse[i] <= mse.min() + 1.0, f"output frame {i} matches source frame {int(mse.argmin())}"


def mask_sink(folder: Path) -> list[str]:
    """An extra sink writing one mask PNG per frame that reached the output: progress a test can count."""
    return ["--sink", f"images:{folder}?what=mask"]


def frames_out(folder: Path) -> int:
    return len(list((folder / "mask").glob("*.png")))


def wait_running(p: subprocess.Popen, folder: Path, frames: int, timeout: float = 90) -> int:
    """Until ``frames`` frames went all the way through the pipeline into ``mask_sink(folder)``.

    Real progress, not a fixed sleep (which raced start-up on a busy machine and the end of the run on a
    fast one). Returns the count seen; fails if the run ends first or nothing moves in time."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        n = frames_out(folder)
        if n >= frames:
            return n
        if p.poll() is not None:
            raise AssertionError(f"the run ended (exit {p.returncode}) after {n} frames, before {frames}")
        time.sleep(0.05)
    raise AssertionError(f"only {frames_out(folder)} frames reached the output in {timeout:.0f} s")


@pytest.fixture()
def clip(avi_clip) -> Path:
    return avi_clip.path


def dead_creator_segments() -> set[str]:
    """Segments whose creating process is gone: leaks (other pipelines running beside us are not)."""
    leaked = set()
    for name in shm_segments():
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not psutil.pid_exists(pid):
            leaked.add(name)
    return leaked


@pytest.fixture(autouse=True)
def no_leftovers():
    before = dead_creator_segments()
    yield
    deadline = time.monotonic() + 10
    while dead_creator_segments() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (dead_creator_segments() - before), f"left in /dev/shm: {dead_creator_segments() - before}"


def test_file_to_mp4_exact_count_and_order(tmp_path, clip, onnx_model):
    n = 40
    out = tmp_path / "out.mp4"
    stats = tmp_path / "stats.json"
    r = run(
        *run_args(
            clip,
            onnx_model,
            "--max-frames",
            str(n),
            "--sink",
            f"file:{out}?crf=0",
            "--opacity",
            "0",
            "--stats-json",
            str(stats),
            "--workers",
            "2",
        ),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "fps" in r.stdout and "p99" in r.stdout
    assert frames_in(out) == n
    source = decode(clip, n)
    assert_in_order(decode(out), source)
    rep = json.loads(stats.read_text())
    assert rep["frames"] == n
    assert set(rep["stages"]) >= {"capture", "preprocess", "infer-1", "infer-2", "overlay"}
    assert rep["latency_ms"]["count"] == n and rep["latency_ms"]["p50"] > 0
    assert not rep["drops"]


def test_live_source_counts_drops_and_bounds_latency(tmp_path, onnx_model):
    stats = tmp_path / "stats.json"
    # 640x480 at 60 fps is more than 2 busy cores segment: frames must drop, and be counted
    r = run(
        *run_args(
            "synthetic://?size=640x480&fps=60&frames=180",
            onnx_model,
            "--sink",
            str(tmp_path / "live.mp4"),
            "--stats-json",
            str(stats),
            "--slots",
            "4",
        ),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(stats.read_text())
    dropped = sum(rep["drops"].values())
    assert rep["frames"] + dropped == 180  # every source frame is either written or counted as dropped
    assert rep["frames"] > 0
    # bounded by the ring (4 frames in flight), not growing with the run
    assert rep["latency_ms"]["p50"] < 1000, rep["latency_ms"]
    assert frames_in(tmp_path / "live.mp4") == rep["frames"]


def test_killed_infer_is_restarted_and_no_frame_is_lost(tmp_path, clip, onnx_model):
    n = 300
    out = tmp_path / "out.mp4"
    stats = tmp_path / "stats.json"
    p = start(
        *run_args(
            clip,
            onnx_model,
            "--max-frames",
            str(n),
            "--sink",
            str(out),
            "--stats-json",
            str(stats),
            "--threads",
            "1",
        ),
        cwd=tmp_path,
    )
    infer = wait_for_stage(p.pid, "infer")
    wait_for_output(out, timeout=60)
    try:
        infer.kill()
    except psutil.NoSuchProcess:
        pytest.fail("the run ended before infer could be killed: raise n")
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "restarting" in stderr
    rep = json.loads(stats.read_text())
    assert rep["restarts"].get("infer") == 1
    assert rep["frames"] == n and not rep["drops"].get("lost")
    assert frames_in(out) == n


def test_sigint_finalizes_mp4_and_leaves_nothing(tmp_path, avi_clip, onnx_model):
    out, progress = tmp_path / "out.mp4", tmp_path / "progress"
    p = start(*run_args(avi_clip.path, onnx_model, "--sink", str(out), *mask_sink(progress)), cwd=tmp_path)
    seen = wait_running(p, progress, 10)
    children = stage_processes(p.pid)
    assert len(children) >= 4
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr
    assert "interrupted" in stderr
    frames = frames_in(out)
    # stopped early, and every frame that had reached the outputs before Ctrl-C is in the finalized mp4
    assert seen <= frames < avi_clip.frames
    assert frames == frames_out(progress)  # both sinks got the same frames
    assert f"{frames} frames" in stdout
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive


def test_killed_supervisor_leaves_no_children_or_segments(tmp_path, clip, onnx_model):
    progress = tmp_path / "progress"
    p = start(
        *run_args(
            clip, onnx_model, "--sink", str(tmp_path / "out.mp4"), *mask_sink(progress), "--no-progress"
        ),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_running(p, progress, 5)
    children = stage_processes(p.pid)
    assert any(n.startswith(f"segstream-{p.pid}-") for n in shm_segments()), "no shared-memory ring in use"
    p.kill()
    p.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans: {[c.pid for c in alive]}"
    deadline = time.monotonic() + 10
    while any(n.startswith(f"segstream-{p.pid}-") for n in shm_segments()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(n.startswith(f"segstream-{p.pid}-") for n in shm_segments())


def test_corrupt_file_is_one_clear_error(tmp_path, onnx_model):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(os.urandom(200_000))
    r = run(*run_args(bad, onnx_model, "--sink", str(tmp_path / "o.mp4")), cwd=tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "corrupt.mp4" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_truncated_and_damaged_file_ends_cleanly(tmp_path, sample_clip, onnx_model):
    """The bundled clip (index at the front) with bytes scribbled over at 20% and cut at a third: the run
    reads up to the cut, counts the damaged frame, writes every frame the file still holds, exits 0."""
    from stream.sources.base import ReadStatus
    from stream.sources.file import FileSource

    data = bytearray(sample_clip.path.read_bytes())
    off = len(data) // 5
    data[off : off + 3000] = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(bytes(data[: len(data) // 3]))
    # what the file holds, read directly (no pipeline): frames up to the cut, and the decode errors
    src = FileSource(str(cut))
    assert src.open().total_frames == sample_clip.frames  # the index still promises every frame
    statuses = []
    while (status := src.read(timeout=5.0).status) is not ReadStatus.EOS:
        statuses.append(status)
    src.close()
    decodable, errors = statuses.count(ReadStatus.OK), statuses.count(ReadStatus.ERROR)
    assert 50 < decodable < sample_clip.frames and errors >= 1  # the cut and the damage are both read

    out, stats = tmp_path / "o.mp4", tmp_path / "stats.json"
    r = run(
        *run_args(cut, onnx_model, "--sink", str(out), "--stats-json", str(stats)), cwd=tmp_path, timeout=90
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith(f"{decodable} frames in ")
    rep = json.loads(stats.read_text())
    assert rep["frames"] == decodable
    # The damage is counted. The cut last packet counts as one more error when the decoder runs on one
    # thread (capture is pinned to one core) and vanishes with frame threads (the direct read above).
    assert errors <= rep["drops"].get("decode_error", 0) <= errors + 1, rep["drops"]
    assert frames_in(out) == decodable


def test_two_tcp_infer_workers_keep_order(tmp_path, clip, onnx_model):
    from stream.transport import free_tcp_port

    p_in, p_out = free_tcp_port(), free_tcp_port()
    worker = ["worker", "infer", "--in", f"tcp://127.0.0.1:{p_in}", "--out", f"tcp://127.0.0.1:{p_out}"]
    worker += ["--model", str(onnx_model), "--threads", "1"]
    workers = [start(*worker, cwd=tmp_path, stdout=subprocess.DEVNULL) for _ in range(2)]
    try:
        n = 30
        out = tmp_path / "out.mp4"
        r = run(
            *run_args(
                clip,
                onnx_model,
                "--max-frames",
                str(n),
                "--sink",
                f"file:{out}?crf=0",
                "--opacity",
                "0",
                "--workers",
                "0",
                "--remote-infer",
                f"tcp://127.0.0.1:{p_in}",
                f"tcp://127.0.0.1:{p_out}",
            ),
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        assert_in_order(decode(out), decode(clip, n))
        assert len(decode(out)) == n
        for w in workers:
            assert w.poll() is None, "a tcp worker died"
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(10)


def test_stalled_stage_is_restarted(tmp_path, clip, onnx_model):
    n = 300
    stats = tmp_path / "stats.json"
    p = start(
        *run_args(
            clip,
            onnx_model,
            "--max-frames",
            str(n),
            "--sink",
            str(tmp_path / "o.mp4"),
            "--stats-json",
            str(stats),
            "--stall-timeout",
            "2",
        ),
        cwd=tmp_path,
    )
    pre = wait_for_stage(p.pid, "preprocess")
    wait_for_stage(p.pid, "infer")
    wait_for_output(tmp_path / "o.mp4", timeout=60)
    try:
        pre.suspend()  # alive but silent: only the heartbeat timeout can find it
    except psutil.NoSuchProcess:
        pytest.fail("the run ended before preprocess could be stopped: raise n")
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "preprocess sent no heartbeat" in stderr
    rep = json.loads(stats.read_text())
    assert rep["restarts"] == {"preprocess": 1} and rep["frames"] == n


def test_restart_budget_spent_names_the_stage_and_exits_nonzero(tmp_path, clip, onnx_model):
    # one infer worker (the default is one per core for files): its restarts are what is counted
    p = start(*run_args(clip, onnx_model, "--sink", str(tmp_path / "o.mp4"), "--workers", "1"), cwd=tmp_path)
    killed = set()
    end = time.monotonic() + 90
    while p.poll() is None and time.monotonic() < end:
        for c in stage_processes(p.pid):
            try:
                if "worker infer" in " ".join(c.cmdline()) and c.pid not in killed:
                    c.kill()
                    killed.add(c.pid)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 1, stderr
    assert len(killed) == 4  # the first run and three restarts (budget 3 in 60 s)
    assert "stage 'infer' failed" in stderr and "restart budget spent" in stderr
    assert "Traceback" not in stderr
