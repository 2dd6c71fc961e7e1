"""What Triton's system shared-memory extension saves: per-request time of `--backend triton://` with the
tensors in the gRPC messages (shm=off) and in a registered shared-memory region (shm=on), alternated.

    python3 tools/bench_triton.py [--uri triton://127.0.0.1:8001/segstream] [--rounds 5] [--requests 20]

Without --uri it starts docs/deploy/pytriton_serve.py (PyTriton, ONNX Runtime on the CPU) from
.venv-pytriton with the bundled model, and stops it at the end. Prints median ms per request for batch 1
and 8 (480x360 float32 input: 2.07 MB per frame), and the local ONNX Runtime time for the same batch.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "stream" / "assets" / "default.onnx"


def start_server() -> tuple[subprocess.Popen, str]:
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    log = Path(tempfile.mkstemp(prefix="bench-triton-", suffix=".log")[1])
    cmd = [str(REPO / ".venv-pytriton/bin/python"), str(REPO / "docs/deploy/pytriton_serve.py"), str(MODEL)]
    cmd += ["--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2])]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while b"READY" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the PyTriton server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, f"triton://127.0.0.1:{ports[0]}/segstream"


def per_request_ms(rt, x: np.ndarray, n: int) -> float:
    rt.run(x)
    t = time.perf_counter()
    for _ in range(n):
        rt.run(x)
    return (time.perf_counter() - t) / n * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=20)
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from engines.runtime import load

    proc = None
    uri = args.uri
    if uri is None:
        proc, uri = start_server()
    try:
        local = load(MODEL, device="cpu", threads=1)
        frames = [np.random.default_rng(i).integers(0, 255, (540, 960, 3), np.uint8) for i in range(8)]
        res: dict[tuple[str, int], list[float]] = {}
        clients = {shm: load(f"{uri}?shm={shm}") for shm in ("off", "on")}
        for _ in range(args.rounds):
            for batch in (1, 8):
                x = local.prepare(frames[:batch])
                for shm, rt in clients.items():
                    res.setdefault((shm, batch), []).append(per_request_ms(rt, x, args.requests))
                res.setdefault(("local ORT, 1 thread", batch), []).append(
                    per_request_ms(local, x, args.requests)
                )
        for rt in clients.values():
            rt.close()
        print(f"{uri}: median ms per request over {args.rounds} alternating rounds of {args.requests}")
        for (mode, batch), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            label = mode if mode.startswith("local") else f"triton shm={mode}"
            print(f"  batch {batch}  {label:22} {statistics.median(v):8.1f} ms")
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
