"""`--backend triton://…` against a real Triton server: PyTriton's bundled tritonserver serving the bundled
model (ONNX Runtime on the CPU) from docs/deploy/pytriton_serve.py, started here as a separate process.

The server runs in its own environment (.venv-pytriton, made by tools/install-dev.sh): nvidia-pytriton 0.7
needs numpy < 2, which the project's environment (opencv-python 5) cannot have.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.transport import free_tcp_port
from tests.procs import REPO, kill_group, run

pytest.importorskip(
    "tritonclient.grpc", reason="tritonclient is not installed (pip install 'segstream[triton]')"
)

SERVER_PY = REPO / ".venv-pytriton" / "bin" / "python"
SERVE = REPO / "docs" / "deploy" / "pytriton_serve.py"
MODEL = REPO / "stream" / "assets" / "default.onnx"


@contextlib.contextmanager
def pytriton_server(model: Path, logdir: Path, *extra: str):
    """A PyTriton server for MODEL on free ports; yields its gRPC port, and ends its whole session after."""
    if not SERVER_PY.exists():
        pytest.skip(f"{SERVER_PY} is absent: run tools/install-dev.sh (it makes the PyTriton environment)")
    ports = [free_tcp_port() for _ in range(3)]
    log = logdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(SERVER_PY), str(SERVE), str(model), "--grpc-port", str(ports[0]), "--http-port",
             str(ports[1]), "--metrics-port", str(ports[2]), *extra],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while b"READY" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PyTriton server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield ports[0]
    finally:
        # the server starts tritonserver and a model proxy: the whole session it leads goes
        kill_group(proc, term_wait=20, kill_wait=5)


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory):
    with pytriton_server(MODEL, tmp_path_factory.mktemp("triton")) as port:
        yield f"triton://127.0.0.1:{port}/segstream"


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((folder / "mask").glob("*.png"))}


def test_run_through_triton_gives_the_local_masks(triton_server, sample_clip, tmp_path):
    """The bundled clip through the Triton server: every mask equals the local ONNX Runtime run's."""
    served = run(
        "run", str(sample_clip.path), "--backend", triton_server, "--sink", "images:served?what=mask",
        "--sink", "served.mp4", "--no-progress", cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    local = run(
        "run",
        sample_clip.path,
        "--sink",
        "images:local?what=mask",
        "--no-progress",
        cwd=tmp_path,
        timeout=180,
    )
    assert local.returncode == 0, local.stderr
    a, b = masks(tmp_path / "served"), masks(tmp_path / "local")
    assert len(a) == len(b) == sample_clip.frames
    differ = [name for name in a if not np.array_equal(a[name], b[name])]
    assert not differ, f"{len(differ)} masks differ, first {differ[:3]}"
    # not vacuous: the model found more than one class on the clip
    assert len(np.unique(np.stack(list(a.values())))) > 1
    assert (tmp_path / "served.mp4").stat().st_size > 10_000


def test_shared_memory_and_socket_transfers_agree(triton_server, sample_clip):
    """shm=on (system shared memory) and shm=off (tensors in the gRPC message) return the local model's
    ids and confidence for a batch; the client's regions are gone from /dev/shm after close()."""
    import av

    from engines.runtime import load

    with av.open(str(sample_clip.path)) as c:
        frames = [f.to_ndarray(format="bgr24") for _, f in zip(range(3), c.decode(video=0), strict=False)]
    local = load(MODEL, device="cpu")
    want_ids, want_conf = local.run(local.prepare(frames), confidence=True)
    for shm in ("on", "off"):
        rt = load(f"{triton_server}?shm={shm}")
        try:
            assert rt.use_shm is (shm == "on")
            assert rt.meta.classes == local.meta.classes  # metadata came from the server's model config
            ids, conf = rt.run(rt.prepare(frames), confidence=True)
            regions = [n for n in os.listdir("/dev/shm") if n.startswith(f"segstream-{os.getpid()}-triton")]
            assert bool(regions) is (shm == "on")
        finally:
            rt.close()
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(conf, want_conf)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"segstream-{os.getpid()}-triton")]


def test_unknown_model_and_dead_server_are_one_line(triton_server, tmp_path):
    base = triton_server.rsplit("/", 1)[0]
    wrong = run("run", "--backend", f"{base}/nosuchmodel", "--max-frames", "2", cwd=tmp_path, timeout=60)
    assert wrong.returncode != 0
    assert "no ready model 'nosuchmodel'" in wrong.stderr and "Traceback" not in wrong.stderr
    down = run(
        "run", "--backend", f"triton://127.0.0.1:{free_tcp_port()}/segstream", "--max-frames", "2",
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert down.returncode != 0
    assert "no Triton server answers" in down.stderr and "Traceback" not in down.stderr
    both = run("run", "--backend", triton_server, "--model", str(MODEL), cwd=tmp_path, timeout=60)
    assert both.returncode == 2 and "leave out --model" in both.stderr
    bad = run("run", "--backend", "triton://127.0.0.1:x/m", cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "port" in bad.stderr and "Traceback" not in bad.stderr


def test_uri_errors_name_the_problem():
    from engines.runtime.triton import TritonURIError, parse_uri

    assert parse_uri("triton://gpu-1:9001/seg?shm=off&timeout=5") == {
        "host": "gpu-1", "port": 9001, "model": "seg", "version": "", "shm": "off", "timeout": 5.0,
    }  # fmt: skip
    assert parse_uri("triton://10.0.0.2/seg")["port"] == 8001
    for uri, want in (
        ("triton://host:8001/", "expected triton://HOST:PORT/MODEL"),
        ("triton://host:8001/a/b", "one model name"),
        ("triton://host:8001/m?shm=maybe", "shm='maybe'"),
        ("triton://host:8001/m?timeout=-1", "timeout"),
        ("triton://host:8001/m?tls=1", "unknown option 'tls'"),
    ):
        with pytest.raises(TritonURIError, match=want):
            parse_uri(uri)
