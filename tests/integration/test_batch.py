"""`segstream batch` on a real local Ray cluster (`ray start --head` on 127.0.0.1 with 2 CPUs, started once
for the module): real clips, a corrupt file, resume, and an actor killed mid-file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.transport import free_tcp_port
from tests.procs import kill_group, run

pytest.importorskip("ray", reason="Ray is not installed (pip install 'segstream[ray]')")

MAX_FRAMES = 60  # per file: enough for several progress polls and a kill mid-file, small enough for CI


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head node in its own session (so the whole cluster is ended by its process group at the end), with
    token authentication (Ray's default for `ray start`) on a token of its own, given to every client here
    through the environment rather than written to ~/.ray."""
    import secrets

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    port = free_tcp_port()
    tmp = tmp_path_factory.mktemp("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    log = open(tmp / "ray.log", "wb")  # noqa: SIM115 - open for the cluster's lifetime
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         "--object-store-memory=100000000", f"--temp-dir={tmp}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{(tmp / 'ray.log').read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        yield address
    finally:
        kill_group(proc, term_wait=20, kill_wait=5)
        log.close()
        for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            os.environ.pop(var, None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_clip, avi_clip) -> Path:
    d = tmp_path_factory.mktemp("archive")
    os.symlink(sample_clip.path, d / "sample.mp4")
    os.symlink(avi_clip.path, d / "highway.avi")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(150_000))
    return d


def batch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run("batch", *args, cwd=cwd, timeout=300)


def test_batch_outputs_resume_and_corrupt_file(ray_cluster, inputs, sample_clip, tmp_path):
    out = tmp_path / "out"
    first = batch(
        str(inputs), "--out", str(out), "--ray", ray_cluster, "--max-frames", str(MAX_FRAMES), cwd=tmp_path
    )
    # the corrupt file fails the batch's exit status, and is named in the summary, but stops nothing
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "skipped": 0, "failed": 1}
    corrupt = summary["files"]["corrupt"]
    assert corrupt["status"] == "failed" and "not a readable video" in corrupt["error"]
    assert "corrupt" in first.stdout and "failed" in first.stdout
    assert not (out / "corrupt").exists()
    for name, (w, h) in (("sample", (960, 540)), ("highway", (480, 270))):
        stats = json.loads((out / name / "stats.json").read_text())
        assert stats["status"] == "done" and stats["frames"] == MAX_FRAMES
        pngs = sorted((out / name / "mask").glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(MAX_FRAMES)]
        assert cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED).shape == (h, w)
        import av

        with av.open(str(out / name / "overlay.mp4")) as c:
            s = c.streams.video[0]
            assert (s.width, s.height, s.frames) == (w, h, MAX_FRAMES)
    assert not (out / ".partial").exists()

    # the same masks as `segstream run` (same runtime, preprocessing and overlay helpers)
    ref = tmp_path / "ref"
    single = run(
        "run", sample_clip.path, "--max-frames", "20", "--no-progress", "--sink", f"images:{ref}?what=mask",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    for p in sorted((ref / "mask").glob("*.png")):
        a = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, cv2.imread(str(out / "sample" / "mask" / p.name), cv2.IMREAD_UNCHANGED)), (
            p.name
        )
    assert len(np.unique(a)) > 1

    # resume: both done files are verified and skipped; one with a missing mask is segmented again
    (out / "highway" / "mask" / "000007.png").unlink()
    before = (out / "sample" / "stats.json").stat().st_mtime_ns
    second = batch(
        str(inputs), "--out", str(out), "--ray", ray_cluster, "--max-frames", str(MAX_FRAMES), cwd=tmp_path
    )
    assert second.returncode == 1, second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 1, "skipped": 1, "failed": 1}
    assert summary["files"]["sample"]["status"] == "skipped"
    assert summary["files"]["highway"]["status"] == "done"
    assert (out / "sample" / "stats.json").stat().st_mtime_ns == before
    assert (out / "highway" / "mask" / "000007.png").exists()


KILL_DRIVER = """
import json, os, signal, sys
from pathlib import Path
from stream.batch.jobs import expand_inputs
from stream.batch.pool import Pool, PoolOptions, connect
from stream.config import DEFAULT_MODEL

address, clip, out, max_frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
events, killed, started = [], [], {}

def on_event(kind, data):
    events.append(kind)
    if kind == "start":
        started[data["job"]] = data["pid"]
    if kind == "frames" and not killed and data["total"] >= 10:
        killed.append(started["sample"])
        os.kill(started["sample"], signal.SIGKILL)

opts = PoolOptions(model=str(DEFAULT_MODEL), actors=2, max_frames=max_frames)
pool = Pool(opts, connect(address), on_event=on_event)
results = pool.run(expand_inputs([clip]), Path(out))
print(json.dumps({"results": results, "killed": killed, "events": events}))
"""


def test_killed_actor_file_is_retried_on_another(ray_cluster, sample_clip, tmp_path):
    """SIGKILL the actor process that is segmenting a file: the file is done by another actor, completely.
    The driver runs in a process of its own (as `segstream batch` does), so this one never joins Ray."""
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", KILL_DRIVER, ray_cluster, str(sample_clip.path), str(out), str(MAX_FRAMES)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["killed"], "the file finished before it could be killed"
    res = got["results"]["sample"]
    assert res["status"] == "done" and res["attempts"] == 2
    assert res["stats"]["worker"]["pid"] != got["killed"][0]
    assert got["events"].count("actor_died") == 1
    assert len(list((out / "sample" / "mask").glob("*.png"))) == MAX_FRAMES


def test_bad_inputs_are_one_line(tmp_path):
    for args, want in (
        ([str(tmp_path / "missing.mp4")], "no such file or folder"),
        ([str(tmp_path)], "holds no video files and no images"),
    ):
        r = batch(*args, "--out", str(tmp_path / "o"), cwd=tmp_path)
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, r.stderr
