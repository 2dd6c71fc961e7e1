"""Many streams through one model (issue 13): aggregate throughput, per-stream latency, memory.

    python tools/bench_streams.py [--counts 1 2 4 8] [--model M.onnx] [--live-size 480x360 --live-fps 15]
                                  [--json results.json]

For each N in --counts, whole ``segstream run`` processes (start-up included in memory, not in fps):

1. files: N streams of the bundled clip in one run -> aggregate frames/s (frames / seconds from "go"),
   per-stream p50/p99 capture->output latency (the worst stream's), and the memory of the whole run;
2. live: N paced synthetic sources (--live-size at --live-fps, 10 s) in one run -> drops and p99 per stream;
3. memory: the run's peak PSS (proportional set size: pages shared by forked stages counted once, summed
   over the supervisor and every process under it, sampled every 0.2 s) against N separate one-stream
   runs started side by side (the sum of their peaks).

Targets on 2 CPU cores: files with 4 streams >= 0.9x the one-stream run's frames/s; memory for 4 streams
<= 0.5x four separate runs; 4 live 15 fps 480x360 streams with 0 drops and p99 <= 100 ms. The machine
should be quiet: other load shows up as lower fps and higher latency (the report prints the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "stream" / "assets" / "sample.mp4"
MODEL = REPO / "stream" / "assets" / "default.onnx"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


class PeakPss:
    """Peak of the summed PSS (MiB) of a process and everything under it, sampled in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for pid in self.pids:
                try:
                    top = psutil.Process(pid)
                    for p in [top, *top.children(recursive=True)]:
                        try:
                            total += p.memory_full_info().pss
                        except (psutil.NoSuchProcess, psutil.AccessDenied):
                            pass
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def run(sources: list[str], model: str, work: Path, extra: list[str] = ()) -> dict:
    """One ``segstream run`` with these sources; its stats report plus the peak PSS of the whole run."""
    stats = work / "stats.json"
    sinks = ["--sink", str(work / "out-{stream}.mp4")]
    cmd = [sys.executable, "-m", "stream", "run", *sources, "--model", model, "--no-progress", *sinks]
    cmd += ["--stats-json", str(stats), *extra]
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
    mem = PeakPss([p.pid])
    out, err = p.communicate()
    peak = mem.stop()
    if p.returncode != 0:
        raise SystemExit(f"segstream run failed ({p.returncode}): {err.strip()[-2000:]}")
    rep = json.loads(stats.read_text())
    rep["peak_pss_mib"] = peak
    return rep


def separate_runs(n: int, model: str, work: Path) -> float:
    """Peak summed PSS (MiB) of N one-stream runs of the clip started side by side."""
    procs = []
    for i in range(n):
        d = work / f"sep{i}"
        d.mkdir()
        cmd = [sys.executable, "-m", "stream", "run", str(CLIP), "--model", model, "--no-progress"]
        procs.append(subprocess.Popen(cmd + ["--sink", str(d / "o.mp4")], env=env(), cwd=d,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    mem = PeakPss([p.pid for p in procs])
    for p in procs:
        p.wait()
    return mem.stop()


def worst(rep: dict, key: str) -> float:
    return max(s.get("latency_ms", {}).get(key, 0.0) for s in rep["stream_stats"].values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--live-size", default="480x360")
    ap.add_argument("--live-fps", type=int, default=15)
    ap.add_argument("--live-seconds", type=int, default=10)
    ap.add_argument("--no-separate", action="store_true", help="skip the N separate runs (memory)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every figure here")
    args = ap.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    rows = []
    base_fps = None
    for n in args.counts:
        with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
            work = Path(tmp)
            files = run([str(CLIP)] * n, args.model, work)
            frames = args.live_fps * args.live_seconds
            live_src = f"synthetic://?size={args.live_size}&fps={args.live_fps}&frames={frames}"
            live = run([live_src] * n, args.model, work)
            sep = None if args.no_separate else separate_runs(n, args.model, work)
        base_fps = base_fps or (files["fps"] if n == 1 else None)
        row = {
            "streams": n,
            "files_fps": files["fps"],
            "files_vs_one": round(files["fps"] / base_fps, 2) if base_fps else None,
            "files_p50_ms": worst(files, "p50"),
            "files_p99_ms": worst(files, "p99"),
            "live_drops": sum(sum(s["drops"].values()) for s in live["stream_stats"].values()),
            "live_p50_ms": worst(live, "p50"),
            "live_p99_ms": worst(live, "p99"),
            "run_pss_mib": round(files["peak_pss_mib"]),
            "separate_pss_mib": round(sep) if sep is not None else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| streams | files fps (all) | vs 1 stream | files p50 / p99 ms (worst stream) | live drops | "
          "live p50 / p99 ms (worst stream) | PSS one run | PSS N separate runs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sep = f"{r['separate_pss_mib']} MiB" if r["separate_pss_mib"] is not None else "-"
        print(
            f"| {r['streams']} | {r['files_fps']:.1f} | {r['files_vs_one'] or '-'} | "
            f"{r['files_p50_ms']:.0f} / {r['files_p99_ms']:.0f} | {r['live_drops']} | "
            f"{r['live_p50_ms']:.0f} / {r['live_p99_ms']:.0f} | {r['run_pss_mib']} MiB | {sep} |"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
