"""Run the pipeline for N minutes and check that no process grows (RSS flat within 5%).

    python tools/soak.py --model m.onnx [--minutes 10] [--source synthetic://?size=480x360&fps=30]

Every ``--every`` seconds the RSS of the supervisor and of each stage process is sampled. The
baseline is the median of the samples in the second tenth of the run (after warm-up: model loaded,
encoder buffers full); the verdict compares it with the median of the last tenth. At the end the run
is stopped with SIGINT (the normal Ctrl-C path) and must exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def stage_of(p: psutil.Process) -> str:
    cmd = p.cmdline()
    return cmd[cmd.index("worker") + 1] if "worker" in cmd else "supervisor"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--source", default="synthetic://?size=480x360&fps=30")
    ap.add_argument("--every", type=float, default=2.0, help="sampling period (s)")
    ap.add_argument("--tolerance", type=float, default=5.0, help="allowed growth, percent")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="segstream-soak-"))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "stream",
        "run",
        args.source,
        "--model",
        args.model,
        "--no-progress",
        "--sink",
        str(tmp / "soak.mp4"),
        "--stats-json",
        str(tmp / "stats.json"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sup = psutil.Process(proc.pid)
    samples: dict[str, list[tuple[float, int]]] = {}
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    try:
        while time.monotonic() < end and proc.poll() is None:
            now = time.monotonic() - t0
            for p in [sup, *sup.children(recursive=True)]:
                try:
                    name = stage_of(p)
                    if name == "supervisor" and p.pid != sup.pid:
                        continue  # helper processes (resource tracker)
                    samples.setdefault(name, []).append((now, p.memory_info().rss))
                except (psutil.NoSuchProcess, ValueError, IndexError):
                    pass
            time.sleep(args.every)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    duration = time.monotonic() - t0
    verdict = {}
    ok = proc.returncode == 0
    print(f"soak: {duration / 60:.1f} min on {args.source}; exit code {proc.returncode}")
    print(out.strip())
    for name, series in sorted(samples.items()):
        n = len(series)
        if n < 10:
            continue
        base = statistics.median(r for _, r in series[n // 10 : n // 5 or 1])
        last = statistics.median(r for _, r in series[-max(1, n // 10) :])
        peak = max(r for _, r in series)
        growth = 100.0 * (last - base) / base
        flat = growth <= args.tolerance
        ok &= flat
        verdict[name] = {
            "base_mb": base / 2**20,
            "last_mb": last / 2**20,
            "peak_mb": peak / 2**20,
            "growth_pct": growth,
            "flat": flat,
            "samples": n,
        }
        print(
            f"  {name:<11} RSS {base / 2**20:7.1f} -> {last / 2**20:7.1f} MiB (peak {peak / 2**20:7.1f}) "
            f"{growth:+5.1f} %  {'flat' if flat else 'GROWING'}"
        )
    if proc.returncode != 0:
        print(err.strip()[-2000:], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"duration_s": duration, "ok": ok, "rss": verdict}, indent=2))
    print("soak: " + ("RSS flat" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
