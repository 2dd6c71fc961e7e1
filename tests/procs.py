"""Shared by the tests that drive segstream (and its helpers) as real processes, integration and unit
alike: the environment a child needs to import this checkout, `python -m stream ...` started or run to
completion, the stage processes under a run, waiting on a run's progress, and counting the frames of a
video it wrote.

Mask-stream helpers (real CamVid samples, a feeder thread, port blocks, a header collector) stay in
integration/mask_helpers.py; this module imports nothing heavier than psutil, so any test can use it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]


def env(**extra: str) -> dict[str, str]:
    """This process's environment plus EXTRA, with this checkout first on PYTHONPATH: the child imports the
    tree under test even from another working directory (the editable install may point elsewhere)."""
    e = dict(os.environ, **extra)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def stream_cmd(*args: object) -> list[str]:
    """``python -m stream ARGS`` (no install needed)."""
    return [sys.executable, "-m", "stream", *map(str, args)]


def start(*args: object, cwd: Path = REPO, **kw) -> subprocess.Popen:
    """``segstream ARGS`` in the background, text output piped unless KW says otherwise."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("env", env())
    return subprocess.Popen(stream_cmd(*args), cwd=cwd, text=True, **kw)


def run(*args: object, cwd: Path = REPO, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``segstream ARGS`` to its end (fails with TimeoutExpired after TIMEOUT s), output captured as text."""
    kw.setdefault("env", env())
    return subprocess.run(stream_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def start_ready(code: str, *args: object) -> subprocess.Popen:
    """Run ``python -c CODE ARGS...`` with this repo importable; return once it printed "ready"."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        env=env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def kill_group(proc: subprocess.Popen, term_wait: float = 20, kill_wait: float = 5) -> None:
    """End the session PROC leads (started with ``start_new_session=True``): SIGTERM, then SIGKILL.

    For servers that start helpers of their own (Ray's head node, PyTriton's tritonserver): killing only
    PROC would leave them running."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- the stages of a run -----------------------------------------------------------------------------------


def stage_processes(pid: int) -> list[psutil.Process]:
    """The stage processes (``... worker STAGE ...``) under PID now; one that exits meanwhile is left out."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in kids:
        try:
            if " worker " in " ".join(c.cmdline()):
                out.append(c)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for_stage(pid: int, stage: str, timeout: float = 60) -> psutil.Process:
    """The first ``worker STAGE`` process under PID, once it appears (fails after TIMEOUT s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for c in stage_processes(pid):
            try:
                if f"worker {stage}" in " ".join(c.cmdline()):
                    return c
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.02)  # short: a test may need to act on a stage while the run still starts
    raise AssertionError(f"no {stage} stage appeared")


def wait_for_output(path: Path, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    """Until the sink at PATH has received frames (model loaded, frames moving), so most of the run is still
    ahead (a fixed sleep raced start-up on a busy machine and the end of the run on a fast one). With PROC,
    fails at once if the run ends first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size > 0:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {path} got a frame: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} never received a frame")


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """communicate(), but a run that does not end in time is killed (stages first) and the test fails
    saying so, instead of a TimeoutExpired that leaves the processes behind."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for c in stage_processes(proc.pid):
            c.kill()
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s (hung); stderr: {(err or '')[-2000:]}")


# -- what a run wrote --------------------------------------------------------------------------------------


def frames_in(path: Path) -> int:
    """Frames ffprobe decodes: fails (no moov, garbage) unless the file is a finalized video."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0"]
        + ["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    count = out.stdout.strip()
    # a file with no video stream (audio only, say) exits 0 and prints nothing: as unplayable as garbage
    assert out.returncode == 0 and count.isdigit(), (
        f"{path} is not a playable video: {out.stderr or 'no video'}"
    )
    return int(count)


def decoded_frames(path: Path) -> int:
    """Frames PyAV decodes from PATH (for tests that must not need the ffprobe binary)."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))
