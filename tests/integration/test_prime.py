"""Priming (stream.headers.PRIME): before a stream's first frame, capture tells the stages downstream its
frame size; preprocess attaches the ring and warms its resize, the overlay opens its sinks and warms the
blend, and a live capture reads its first frame only once the overlay answered. Real runs, real files.

Without it each stage did that work on the first frame (5-7 ms each on 2 cores), and on a live source
paced near the machine's limit the backlog took several frames to drain: it was the run's p99.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import procs
from tests.procs import frames_in

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed"),
]


def run(args: list[str], cwd: Path):
    return procs.run("run", *args, "--no-progress", cwd=cwd, timeout=100)


def test_live_source_waits_for_the_primed_overlay(tmp_path: Path, onnx_model: Path) -> None:
    src = "synthetic://?size=320x240&fps=20&frames=40"
    out, stats = tmp_path / "live.mp4", tmp_path / "live.json"
    p = run(
        [src, "--live", "--model", str(onnx_model), "--sink", str(out), "--stats-json", str(stats)], tmp_path
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads(stats.read_text())
    capture, overlay = rep["stages"]["capture"], rep["stages"]["overlay"]
    # the overlay answered the prime (a wait of PRIME_WAIT_S = 1 s would mean it never did)
    assert 0 <= capture["extra"]["prime_wait_ms"] < 1000, capture
    assert overlay["extra"]["primed_ms"] >= 0, overlay
    assert overlay.get("extra", {}).get("malformed") is None, overlay
    # nothing lost to it: every frame the overlay wrote is in the video
    assert rep["frames"] > 0 and frames_in(out) == rep["frames"] == overlay["frames_out"]


def test_file_frames_queue_behind_the_prime(tmp_path: Path, onnx_model: Path, sample_clip) -> None:
    out, stats = tmp_path / "file.mp4", tmp_path / "file.json"
    args = [str(sample_clip.path), "--model", str(onnx_model), "--max-frames", "25"]
    p = run([*args, "--sink", str(out), "--stats-json", str(stats)], tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads(stats.read_text())
    assert "primed_ms" in rep["stages"]["overlay"]["extra"], rep["stages"]["overlay"]
    # a file's capture does not wait for the answer (its frames are lossless anyway)
    assert "prime_wait_ms" not in rep["stages"]["capture"].get("extra", {})
    assert frames_in(out) == rep["frames"] == 25
