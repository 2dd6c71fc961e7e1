"""The shared test helpers (tests/procs.py, tests/reading.py) do what the tests that lean on them assume:
a child imports this checkout whatever its working directory and PYTHONPATH, a hung run is killed and
fails the test, a server's whole session goes, frame counts refuse what is not a finalized video, and a
source that never ends is reported rather than read forever."""

from __future__ import annotations

import os
import subprocess
import sys
import wave

import psutil
import pytest

from tests.procs import REPO, decoded_frames, env, finish, frames_in, kill_group, run
from tests.reading import read_all, read_ok


def test_a_child_imports_this_checkout_from_any_folder(tmp_path) -> None:
    """A `stream` package earlier on the inherited PYTHONPATH (an editable install of another clone, say)
    must not shadow the tree under test: helpers that passed only os.environ ran that one instead."""
    decoy = tmp_path / "decoy"
    (decoy / "stream").mkdir(parents=True)
    (decoy / "stream" / "__init__.py").write_text("")
    (decoy / "stream" / "__main__.py").write_text("print('decoy')\n")
    (tmp_path / "work").mkdir()
    inherited = env(PYTHONPATH=str(decoy))
    assert inherited["PYTHONPATH"] == os.pathsep.join([str(REPO), str(decoy)])
    code = "import stream, sys; sys.stdout.write(stream.__file__)"
    plain = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "work",
        env=dict(os.environ, PYTHONPATH=str(decoy)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.stdout.startswith(str(decoy)), "the decoy does not shadow: this test would prove nothing"
    ours = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "work", env=inherited, capture_output=True, text=True
    )
    assert ours.stdout == str(REPO / "stream" / "__init__.py"), ours.stderr
    r = run("--help", cwd=tmp_path / "work", env=inherited, timeout=60)
    assert r.returncode == 0 and "decoy" not in r.stdout and "run" in r.stdout, r.stderr


def test_finish_kills_a_hung_run_and_fails_the_test() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with pytest.raises(pytest.fail.Exception, match="did not end within 0.5 s"):
        finish(proc, 0.5)
    assert proc.poll() is not None


def test_kill_group_ends_the_whole_session() -> None:
    """A server that starts helpers of its own (tritonserver, Ray's raylets): none may outlive the test."""
    proc = subprocess.Popen(
        ["bash", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    helper = psutil.Process(int(proc.stdout.readline()))
    assert helper.is_running()
    kill_group(proc, term_wait=5, kill_wait=5)
    assert proc.poll() is not None
    gone, alive = psutil.wait_procs([helper], timeout=5)
    assert not alive, "the session's helper outlived kill_group"
    kill_group(proc)  # already gone: nothing to do, no error


def test_frame_counts_refuse_what_is_not_a_finalized_video(sample_clip, tmp_path) -> None:
    assert frames_in(sample_clip.path) == decoded_frames(sample_clip.path) == sample_clip.frames
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all " * 3000)
    sound = tmp_path / "sound.wav"  # a real media file ffprobe reads without error, but no video in it
    with wave.open(str(sound), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    for path in (junk, sound):
        with pytest.raises(AssertionError, match=f"{path.name} is not a playable video"):
            frames_in(path)


def test_reading_helpers_report_a_source_that_does_not_end() -> None:
    from stream.uri import open_source

    src = open_source("synthetic://?size=64x48&fps=30&frames=5&live=0")
    src.open()
    try:
        frames = read_all(src)
        assert [f.status.name for f in frames] == ["OK"] * 5 + ["EOS"]
    finally:
        src.close()
    src = open_source("synthetic://?size=64x48&fps=30&frames=100&live=0")
    src.open()
    try:
        assert len(read_ok(src, 3, within_s=10)) == 3
        with pytest.raises(AssertionError, match="no EOS within 4 reads"):
            read_all(src, limit=4)
    finally:
        src.close()
