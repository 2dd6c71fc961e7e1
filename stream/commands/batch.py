"""`segstream batch INPUTS... --out DIR`: segment an archive of videos on a Ray cluster (or this machine).

INPUTS are video files, folders (their videos; a folder of images is one input), glob patterns and list files
(.txt/.list, one path a line). Each file gets OUT/NAME/overlay.mp4, OUT/NAME/mask/NNNNNN.png and
OUT/NAME/stats.json; OUT/summary.json lists every file. Rerunning resumes: files already done (verified by
frame count) are skipped. A file that cannot be read is reported and the batch goes on (exit 1 at the end);
a file whose worker died is retried on another actor. Without --ray a local Ray starts with this machine's
cores; with --ray ADDRESS the actors run on that cluster (OUT must then be storage every node sees).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

HELP = "segment many video files on a Ray cluster (resumable; per-file overlay, masks, stats)"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders, globs or list files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (one subfolder per file)")
    p.add_argument("--model", default=None, help="model file or triton:// URI (default: the bundled model)")
    p.add_argument(
        "--ray", default=None, metavar="ADDRESS", help="Ray cluster to join (default: start one here)"
    )
    p.add_argument(
        "--actors", type=int, default=None, metavar="N", help="actors (default: cores / threads, or GPUs)"
    )
    p.add_argument(
        "--threads", type=int, default=None, metavar="T", help="inference threads per actor (default 1)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="at most N frames per file")
    p.add_argument("--opacity", type=float, default=0.5, metavar="F")
    p.add_argument("--legend", action="store_true", help="draw the class legend on the overlay")
    p.add_argument("--retries", type=int, default=2, metavar="N", help="retries of a file whose worker died")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class BatchProgress:
    """One rich progress bar over files and frames (on a terminal only)."""

    def __init__(self, enabled: bool, files: int, frames: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.bar = None
        if enabled and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]segstream batch[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("frames"),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=self.console,
                transient=True,
            )
            self.task = self.bar.add_task(f"files 0/{files}", total=frames or None)
            self.bar.start()
        self.files = files
        self.done_files = 0
        self.base = 0  # frames of files finished before this run (skipped)

    def __call__(self, kind: str, data: dict) -> None:
        if self.bar is None:
            return
        if kind == "frames":
            self.bar.update(self.task, completed=self.base + data["total"])
        elif kind == "done":
            self.done_files += 1
            self.bar.update(self.task, description=f"files {self.done_files}/{self.files}")
        elif kind == "actor_died":
            self.console.print(
                f"worker {data.get('pid')} died during {data['job']}: retrying it on another actor"
            )

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def expected_frames(jobs, max_frames: int | None) -> dict[str, int]:
    """Frames each file will give (container counts, cheap); 0 where unknown or unreadable."""
    from stream.uri import open_source

    out = {}
    for job in jobs:
        n = 0
        try:
            src = open_source(job.source if job.kind == "video" else f"images:{job.source}")
            try:
                n = src.open().total_frames or 0
                n = len(getattr(src, "files", [])) or n
            finally:
                src.close()
        except Exception:  # noqa: BLE001 - a corrupt file is the actor's to report; here it only sizes the bar
            n = 0
        out[job.name] = min(n, max_frames) if max_frames else n
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from engines.errors import SegstreamError
    from stream.batch.jobs import PARTIAL, expand_inputs, verify_done
    from stream.batch.pool import Pool, PoolOptions, connect
    from stream.config import DEFAULT_MODEL

    for key in ("actors", "threads", "max_frames"):
        v = getattr(args, key)
        if v is not None and v < 1:
            raise SegstreamError(f"--{key.replace('_', '-')} {v}: must be a positive integer")
    if not 0.0 <= args.opacity <= 1.0:
        raise SegstreamError(f"--opacity {args.opacity}: must be in [0, 1]")
    model = args.model or str(DEFAULT_MODEL)
    if model.startswith("triton://"):
        from engines.runtime.triton import parse_uri

        parse_uri(model)
    else:
        from engines.runtime import backend_for
        from engines.runtime.probe import probe

        backend_for(model)
        if not Path(model).is_file():
            raise SegstreamError(f"model file not found: {model}")
        probe(model)  # an ONNX model that breaks the contract is refused before Ray starts
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SegstreamError(f"--out {out}: is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    jobs = expand_inputs(args.inputs)
    # what a killed earlier run left half-written (one batch per OUT at a time)
    shutil.rmtree(out / PARTIAL, ignore_errors=True)

    results: dict[str, dict] = {}
    todo = []
    for job in jobs:
        stats = verify_done(job, out)
        if stats is not None and stats.get("max_frames") == args.max_frames:
            results[job.name] = {"status": "skipped", "stats": stats, "attempts": 0, "source": job.source}
        else:
            todo.append(job)
    t0 = time.perf_counter()
    resources: dict = {}
    ray_start_s = 0.0
    if todo:
        resources = connect(args.ray)
        ray_start_s = time.perf_counter() - t0
        opts = PoolOptions(
            model=model,
            actors=args.actors,
            threads=args.threads,
            device=args.device,
            max_frames=args.max_frames,
            opacity=args.opacity,
            legend=args.legend,
            retries=args.retries,
        )
        frames = expected_frames(todo, args.max_frames)
        progress = BatchProgress(not args.no_progress, len(todo), sum(frames.values()))
        try:
            pool = Pool(opts, resources, on_event=progress)
            results.update(pool.run(todo, out))
        finally:
            progress.stop()
            shutil.rmtree(out / PARTIAL, ignore_errors=True)
    wall = time.perf_counter() - t0

    con = Console(soft_wrap=True)
    table = Table(title=f"segstream batch: {len(jobs)} files -> {out}")
    for col in ("file", "status", "frames", "fps", "s", "tries", "note"):
        table.add_column(col, justify="right" if col in ("frames", "fps", "s", "tries") else "left")
    new_frames = 0
    for job in jobs:
        r = results[job.name]
        st = r.get("stats", {})
        if r["status"] == "done":
            new_frames += st.get("frames", 0)
        note = r.get("error", "")
        if not note and st.get("decode_errors"):
            note = f"{st['decode_errors']} decode errors skipped"
        if r["status"] == "skipped":
            note = "done before (verified)"
        if r.get("attempts", 0) > 1 and r["status"] == "done":
            note = f"worker died; retried ({r['attempts']} tries)"
        style = {"done": "green", "skipped": "dim", "failed": "red"}[r["status"]]
        table.add_row(
            job.name,
            f"[{style}]{r['status']}[/]",
            str(st.get("frames", "")),
            f"{st['fps']:.1f}" if r["status"] == "done" else "",
            f"{st['wall_s']:.1f}" if r["status"] == "done" else "",
            str(r.get("attempts", 0)),
            note,
        )
    con.print(table)
    counts = {s: sum(1 for r in results.values() if r["status"] == s) for s in ("done", "skipped", "failed")}
    done = counts["done"]
    rate = (
        f"{new_frames / wall:.1f} frames/s, {done * 3600 / wall:.0f} files/hour" if done and wall > 0 else ""
    )
    con.print(
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed in {wall:.1f} s"
        + (f" ({rate})" if rate else "")
    )
    summary = {
        "out": str(out.resolve()),
        "model": model,
        "ray": args.ray or "local",
        "resources": resources,
        "wall_s": round(wall, 3),
        "ray_start_s": round(ray_start_s, 3),  # joining or starting Ray, part of wall_s
        "frames": new_frames,
        "counts": counts,
        "files": {job.name: results[job.name] for job in jobs},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 1 if counts["failed"] else 0
