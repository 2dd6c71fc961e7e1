"""Stage launchers (stream.launch): stages forked from a pre-imported template process keep the
supervisor's contract — their command line, exit codes, signals, log files — and die with the supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stream import launch
from stream.config import PipelineConfig
from stream.stages.base import StageContext
from tests.procs import REPO, env, run, start, wait_for_output

BUNDLED_MODEL = REPO / "stream" / "assets" / "default.onnx"
ENDLESS = "synthetic://?size=320x240&fps=30&frames=100000&live=0"
STAGES = ("capture", "preprocess", "infer", "overlay")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not launch.forkserver_usable(), reason="forkserver launcher: Linux + setproctitle"),
]


def run_args(source: str, sink: Path, *more: str) -> list[str]:
    return ["run", source, "--model", str(BUNDLED_MODEL), "--sink", str(sink), "--no-progress", *more]


def stages_of(pid: int) -> dict[str, psutil.Process]:
    """Stage processes under ``pid`` by the command line the tests (and ps) know them by."""
    found = {}
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for c in kids:
        try:
            words = " ".join(c.cmdline()).split()
        except psutil.NoSuchProcess:
            continue
        if "worker" in words and words.index("worker") + 1 < len(words) and "--context" in words:
            found[f"{words[words.index('worker') + 1]}:{c.pid}"] = c
    return found


def wait_for_stages(pid: int, n: int, timeout: float = 90) -> dict[str, psutil.Process]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = stages_of(pid)
        if len(found) >= n and all(any(k.startswith(s + ":") for k in found) for s in STAGES):
            return found
        time.sleep(0.05)
    pytest.fail(f"stages did not all appear: {sorted(stages_of(pid))}")


def test_stages_are_forked_from_one_preloaded_template_and_die_with_a_killed_supervisor(tmp_path):
    """Every stage's parent is one template process (the supervisor's child) that had the inference
    runtime loaded, and the stage shows ``python -m stream worker STAGE --context FILE``; SIGKILL of the
    supervisor then takes the template and every stage with it, and leaves no ring in /dev/shm."""
    out = tmp_path / "out.mp4"
    p = start(*run_args(ENDLESS, out), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stages = wait_for_stages(p.pid, 5)  # capture, preprocess, 2 x infer (2 cores) or 1, overlay
        wait_for_output(out, p)  # frames are moving
        parents = {s.ppid() for s in stages.values()}
        assert len(parents) == 1, f"stages have several parents: {parents}"
        template = psutil.Process(parents.pop())
        assert template.pid != p.pid, "stages were started as the supervisor's own children"
        assert template.ppid() == p.pid
        assert "forkserver" in " ".join(template.cmdline())
        # the template imported the heavy libraries before forking: no stage loads them from scratch
        assert "cv2" in Path(f"/proc/{template.pid}/maps").read_text()
        for key, s in stages.items():
            cmd = s.cmdline()
            assert " ".join(cmd).startswith(
                f"{sys.executable} -m stream worker {key.split(':')[0]} --context"
            )
        segments = {n for n in os.listdir("/dev/shm") if n.startswith(f"segstream-{p.pid}-")}
        assert segments, "no shared-memory ring in use"
        p.kill()
        p.wait()
        gone, alive = psutil.wait_procs([template, *stages.values()], timeout=10)
        assert not alive, f"left running after the supervisor was killed: {alive}"
        end = time.monotonic() + 10
        while segments & set(os.listdir("/dev/shm")) and time.monotonic() < end:
            time.sleep(0.1)
        assert not segments & set(os.listdir("/dev/shm"))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _capture_context(tmp_path: Path) -> Path:
    """A capture stage that waits for a supervisor's go that never comes (its control peers are absent)."""
    cfg = PipelineConfig(source="synthetic://?size=64x48&fps=30&frames=10", model=str(BUNDLED_MODEL))
    ctx = StageContext(
        stage="capture",
        name="capture",
        config=json.loads(cfg.to_json()),
        endpoints={
            "ctl_up": f"push+connect:ipc://{tmp_path}/ctl-up",
            "ctl_down": f"sub+connect:ipc://{tmp_path}/ctl-down",
            "out": f"push+bind:ipc://{tmp_path}/frames",
            "acks": f"pull+bind:ipc://{tmp_path}/acks",
        },
        parent_pid=os.getpid(),
    )
    path = tmp_path / "capture.json"
    path.write_text(ctx.to_json())
    return path


@pytest.mark.parametrize("kind", ["forkserver", "popen"])
def test_launched_stage_handles_mean_what_popen_means(tmp_path, kind):
    """Exit codes, wait(timeout), SIGTERM and SIGKILL, and the log file, for both launchers alike."""
    launcher = launch.ForkserverLauncher() if kind == "forkserver" else launch.PopenLauncher()
    try:
        # a user error in a stage: one line in its log, exit code 2, no traceback
        bad = tmp_path / "missing.json"
        log = tmp_path / "bad.log"
        h = launcher.start("capture", bad, log)
        assert h.wait(timeout=60) == 2 and h.returncode == 2 and h.poll() == 2
        text = log.read_text()
        assert "cannot read context" in text and "Traceback" not in text

        ctx = _capture_context(tmp_path)
        log = tmp_path / "capture.log"
        h = launcher.start("capture", ctx, log)
        assert h.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            h.wait(timeout=0.5)
        proc = psutil.Process(h.pid)
        assert "worker capture --context" in " ".join(proc.cmdline())
        assert os.readlink(f"/proc/{h.pid}/fd/0") == os.devnull
        assert Path(os.readlink(f"/proc/{h.pid}/fd/1")) == log == Path(os.readlink(f"/proc/{h.pid}/fd/2"))
        time.sleep(1.0)  # into its loop (SIGTERM handler installed)
        h.terminate()
        assert h.wait(timeout=30) == 128 + signal.SIGTERM  # the stage's own SIGTERM path, not a crash
        h = launcher.start("capture", ctx, log)
        h.kill()
        assert h.wait(timeout=30) == -signal.SIGKILL
        h.send_signal(signal.SIGTERM)  # reaped: a no-op, never a signal to a reused pid
    finally:
        if isinstance(launcher, launch.ForkserverLauncher):
            launcher.close()


def test_an_unknown_launcher_is_one_clear_line(tmp_path):
    r = run(
        *run_args("synthetic://?frames=2", tmp_path / "o.mp4"),
        cwd=tmp_path,
        env=env(SEGSTREAM_LAUNCHER="threads"),
        timeout=60,
    )
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "SEGSTREAM_LAUNCHER" in lines[0], r.stderr


def test_a_one_frame_run_with_fresh_interpreters_still_works(tmp_path):
    """The Popen launcher (non-Linux, no setproctitle, or SEGSTREAM_LAUNCHER=popen) runs the pipeline."""
    out = tmp_path / "one.mp4"
    r = run(
        *run_args("synthetic://?size=96x64&frames=3", out, "--max-frames", "1"),
        cwd=tmp_path,
        env=env(SEGSTREAM_LAUNCHER="popen"),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "1 frames in" in r.stdout and out.stat().st_size > 0
