"""Where each millisecond of a `segstream run` goes: CPU time, page faults and context switches per stage
process, from outside (psutil), with the start-up cost taken out.

    python tools/stage_cpu.py [CLIP] [--repeat 3] [-- extra segstream run options]

Runs ``segstream run CLIP`` twice per round: once whole and once with ``--max-frames 1``. The second is the
start-up (imports, model load, encoder open) and shutdown of each stage; the difference divided by the
frames is what each stage spends per frame in steady state. Medians over the rounds. The figures in
docs/performance.md come from this tool.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def role(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    if "worker " in cmd:
        return cmd.split("worker ", 1)[1].split()[0]
    if "forkserver" in cmd or not cmd:
        return "template"
    if "resource_tracker" in cmd:
        return "tracker"
    return "supervisor"


def sample(cmd: list[str]) -> tuple[float, dict[str, list[float]]]:
    """Run ``cmd``; per role: [cpu s, minor faults, voluntary, involuntary context switches] (summed over
    processes of that role, e.g. the infer workers)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    root = psutil.Process(p.pid)
    last: dict[int, tuple[str, list[float]]] = {}
    while p.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for c in procs:
            try:
                with c.oneshot():
                    t, cs = c.cpu_times(), c.num_ctx_switches()
                    stat = Path(f"/proc/{c.pid}/stat").read_text().rsplit(")", 1)[1].split()
                    name = "supervisor" if c.pid == root.pid else role(c)
                    if c.pid in last and name in ("supervisor", "template"):
                        name = last[c.pid][0]  # an exiting stage's cmdline reads empty: keep its role
                    last[c.pid] = (name, [t.user + t.system, int(stat[7]), cs.voluntary, cs.involuntary])
            except (psutil.Error, OSError):
                pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out: dict[str, list[float]] = {}
    for name, values in last.values():
        acc = out.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate(values):
            acc[i] += v
    return wall, out


def frames_of(clip: str) -> int:
    import av

    with av.open(clip) as c:
        return sum(1 for _ in c.decode(video=0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", nargs="?", default=str(REPO / "stream" / "assets" / "sample.mp4"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="after --: more `segstream run` options")
    args = ap.parse_args()
    n = frames_of(args.clip)
    console = Console()
    full: dict[str, list[list[float]]] = {}
    one: dict[str, list[list[float]]] = {}
    walls: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        base = [sys.executable, "-m", "stream", "run", args.clip, "--no-progress", "--sink", f"{d}/o.mp4"]
        for r in range(args.repeat):
            w, a = sample(base + args.extra)
            _, b = sample(base + ["--max-frames", "1"] + args.extra)
            walls.append(w)
            for k, v in a.items():
                full.setdefault(k, []).append(v)
            for k, v in b.items():
                one.setdefault(k, []).append(v)
            console.print(f"round {r + 1}: {w:.2f} s")
    table = Table(
        title=f"{Path(args.clip).name}: {n} frames, median of {args.repeat} runs "
        f"(wall {statistics.median(walls):.2f} s)"
    )
    for col in ("stage", "CPU s", "start-up s", "ms/frame", "faults/frame", "ctx sw/frame"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    total = 0.0
    order = ["supervisor", "template", "tracker", "capture", "preprocess", "infer", "overlay"]
    for k in sorted(full, key=lambda s: order.index(s) if s in order else 99):
        med = [statistics.median(v[i] for v in full[k]) for i in range(4)]
        st = [statistics.median(v[i] for v in one.get(k, [[0, 0, 0, 0]])) for i in range(4)]
        per = (med[0] - st[0]) / max(n - 1, 1) * 1000
        total += per
        table.add_row(
            k,
            f"{med[0]:.2f}",
            f"{st[0]:.2f}",
            f"{per:.2f}",
            f"{(med[1] - st[1]) / max(n - 1, 1):.0f}",
            f"{(med[2] + med[3] - st[2] - st[3]) / max(n - 1, 1):.1f}",
        )
    table.add_row("all", "", "", f"{total:.2f}", "", "")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
