"""Start-up of `segstream run` (issue 11): the supervisor reads the model's metadata without loading it,
a one-frame run gives a valid video, and a file run puts every core to work on inference."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from tests.procs import REPO, run, start

BUNDLED_MODEL = REPO / "stream" / "assets" / "default.onnx"
pytestmark = pytest.mark.timeout(150)


def mapped_libraries(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_the_supervisor_never_loads_an_inference_runtime(tmp_path, sample_clip):
    """Only infer processes load the model; the supervisor reads its metadata from the file. Checked on
    the supervisor's own memory map while the run goes on: a loaded ONNX Runtime library never goes away."""
    p = start(
        "run",
        str(sample_clip.path),
        "--model",
        str(BUNDLED_MODEL),
        "--max-frames",
        "40",
        "--sink",
        str(tmp_path / "out.mp4"),
        "--no-progress",
        cwd=tmp_path,
    )
    infer_maps = ""
    supervisor_maps = ""
    end = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < end and "onnxruntime" not in infer_maps:
        try:
            children = psutil.Process(p.pid).children(recursive=True)  # stages may be grandchildren
        except psutil.NoSuchProcess:
            break
        for c in children:
            try:
                if "worker infer" in " ".join(c.cmdline()):
                    infer_maps = mapped_libraries(c.pid)
            except psutil.NoSuchProcess:
                pass
        if children:  # stages are started after the model was probed: the supervisor's map is final
            supervisor_maps = mapped_libraries(p.pid) or supervisor_maps
        time.sleep(0.05)
    supervisor_maps = mapped_libraries(p.pid) or supervisor_maps
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    # the check can see a loaded runtime (the infer stage has one), so its absence below means something
    assert "onnxruntime" in infer_maps
    assert supervisor_maps and "onnxruntime" not in supervisor_maps


def test_a_one_frame_run_writes_a_valid_one_frame_video(tmp_path, sample_clip):
    import av

    out = tmp_path / "one.mp4"
    r = run(
        "run",
        str(sample_clip.path),
        "--model",
        str(BUNDLED_MODEL),
        "--max-frames",
        "1",
        "--sink",
        str(out),
        "--no-progress",
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "1 frames in" in r.stdout
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(frames) == 1
    assert frames[0].shape == (sample_clip.height, sample_clip.width, 3)
    assert frames[0].std() > 5  # a picture, not a blank frame


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores"
)
def test_a_file_run_starts_one_infer_worker_per_core(tmp_path, sample_clip):
    """At default flags on 2 cores: two single-threaded infer processes, both doing frames (the old
    default was one pinned thread, leaving the second core idle half the time)."""
    two = sorted(os.sched_getaffinity(0))[:2]
    stats = tmp_path / "stats.json"
    r = run(
        "run",
        str(sample_clip.path),
        "--model",
        str(BUNDLED_MODEL),
        "--max-frames",
        "60",
        "--sink",
        str(tmp_path / "out.mp4"),
        "--no-progress",
        "--stats-json",
        str(stats),
        cwd=tmp_path,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, two),
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(stats.read_text())
    infer = {k: v for k, v in rep["stages"].items() if k.startswith("infer")}
    assert sorted(infer) == ["infer-1", "infer-2"]
    assert sum(v["frames_out"] for v in infer.values()) == 60 == rep["frames"]
    assert all(v["frames_out"] > 0 for v in infer.values())
