"""Benchmark `segstream batch` (Ray, 1 and 2 actors) against a plain shell loop of `segstream run` over the
same files: whole processes, start-up included, modes alternated round by round so that load from other
work on the machine falls on all of them alike.

    python3 tools/bench_batch.py [FILES...] [--repeat 2] [--max-frames N] [--json out.json]

Default files: the bundled clip and, when present, the shared clips (../shared/data/video). Prints one row
per mode: median wall seconds, frames/s and files/hour over the repeats.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "video"


def default_files() -> list[Path]:
    files = [REPO / "stream" / "assets" / "sample.mp4"]
    if SHARED.is_dir():
        files += sorted(p for p in SHARED.iterdir() if p.suffix in (".mp4", ".avi"))
    return files


def frames_of(path: Path, max_frames: int | None) -> int:
    import av

    with av.open(str(path)) as c:
        n = sum(1 for _ in c.decode(video=0))
    return min(n, max_frames) if max_frames else n


def shell_loop(files: list[Path], out: Path, max_frames: int | None) -> float:
    """What a user writes without `segstream batch`: one `segstream run` per file, one after the other."""
    limit = f" --max-frames {max_frames}" if max_frames else ""
    script = "\n".join(
        f"segstream run {shlex.quote(str(f))} --no-progress{limit} "
        f"--sink {shlex.quote(str(out / f.stem) + '.mp4')} "
        f"--sink {shlex.quote(f'images:{out / f.stem}?what=mask')} > /dev/null"
        for f in files
    )
    t = time.perf_counter()
    subprocess.run(["bash", "-e", "-c", script], check=True)
    return time.perf_counter() - t


def batch(files: list[Path], out: Path, actors: int, max_frames: int | None) -> float:
    cmd = [
        sys.executable,
        "-m",
        "stream",
        "batch",
        *map(str, files),
        "--out",
        str(out),
        "--actors",
        str(actors),
    ]
    cmd += ["--no-progress"] + (["--max-frames", str(max_frames)] if max_frames else [])
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["done"] == len(files), summary["counts"]
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    files = args.files or default_files()
    total = sum(frames_of(f, args.max_frames) for f in files)
    modes = {
        "shell loop of `segstream run`": lambda out: shell_loop(files, out, args.max_frames),
        "segstream batch, 1 actor": lambda out: batch(files, out, 1, args.max_frames),
        "segstream batch, 2 actors": lambda out: batch(files, out, 2, args.max_frames),
    }
    walls: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.repeat):
        for mode, fn in modes.items():
            out = Path(tempfile.mkdtemp(prefix="bench-batch-"))
            try:
                walls[mode].append(fn(out))
            finally:
                shutil.rmtree(out, ignore_errors=True)
            print(f"round {r + 1}: {mode}: {walls[mode][-1]:.1f} s", file=sys.stderr, flush=True)
    print(f"{len(files)} files, {total} frames, median of {args.repeat} alternating rounds (whole processes)")
    print(f"{'mode':34} {'wall s':>8} {'frames/s':>9} {'files/hour':>11}")
    rows = {}
    for mode, w in walls.items():
        med = statistics.median(w)
        rows[mode] = {
            "wall_s": w,
            "median_s": med,
            "fps": total / med,
            "files_per_hour": len(files) * 3600 / med,
        }
        print(f"{mode:34} {med:8.1f} {total / med:9.1f} {len(files) * 3600 / med:11.0f}")
    if args.json:
        args.json.write_text(
            json.dumps({"files": list(map(str, files)), "frames": total, "modes": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
