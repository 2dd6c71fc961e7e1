"""`segstream tune --target-fps N`: find the most accurate run configuration that reaches N fps here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "measure model x size x precision x backend x batch x threads (x tiled) here; write the best config"
DESCRIPTION = """Measure candidate run configurations on this machine through the real pipeline (each one is a
`segstream run SOURCE --config ... --stats-json` for --frames frames), pair each with its mIoU on the
labelled folder --data (at the source's frame size when the source is larger than the model), print the
table with the Pareto-optimal ones marked, plot mIoU vs fps, and write the most accurate configuration that
reaches the target as OUT/best.toml, for `segstream run SOURCE --config OUT/best.toml`.

Candidates: the models (default: the bundled one) at each --sizes input size (the same dynamic-size ONNX
graph) x --precisions (int8: static Q/DQ quantization calibrated on --data, ONNX Runtime CPU) x
--backends (torch: the model's .pt checkpoint, when there is one) x --batches x --threads (WORKERSxTHREADS)
and, for a source larger than the model input, tiled inference at scale 0.5 and 1. The likeliest useful
configurations are measured first; --budget stops before a candidate that would not finish in time.

examples:
  segstream tune --target-fps 25 --data ../shared/data/camvid/val
  segstream tune --target-fps 10 --source big.mp4 --data val --budget 3 --out tune-big"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--target-fps", type=float, required=True, metavar="N", help="frames per second to reach")
    p.add_argument(
        "--source", default=None, metavar="URI", help="what to measure on (default: the bundled clip)"
    )
    p.add_argument("--data", default=None, metavar="DIR", help="labelled folder (images/, labels/) for mIoU")
    p.add_argument("--budget", type=float, default=5.0, metavar="MIN", help="time box in minutes (default 5)")
    p.add_argument("--out", default="tune-out", metavar="DIR", help="results folder (default tune-out)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ONNX",
        help="model to try (repeatable; default bundled)",
    )
    p.add_argument("--sizes", default="480x360,320x240", help="model input sizes WxH, comma-separated")
    p.add_argument("--precisions", default=None, help="fp32,int8 (default: both with --data, else fp32)")
    p.add_argument("--backends", default="onnxruntime,torch", help="onnxruntime,torch (default both)")
    p.add_argument("--batches", default="1", help="max inference batches, comma-separated (default 1)")
    p.add_argument(
        "--threads",
        default=None,
        metavar="WxT,...",
        help="infer workers x threads each, comma-separated (default: one worker per core x 1 thread, "
        "one worker x all cores, 1x1)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.1,
        metavar="F",
        help="headroom: a config must reach target x (1 + F) fps, twice (default 0.1)",
    )
    p.add_argument("--frames", type=int, default=60, metavar="N", help="frames per pipeline run (default 60)")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="labelled images for mIoU (default 20)")
    p.add_argument(
        "--sink", action="append", default=None, metavar="SPEC", help="outputs of the runs (default mp4)"
    )


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _grid(args: argparse.Namespace, source_wh):
    from engines.runtime.probe import probe
    from engines.tune import BACKENDS, PRECISIONS, Grid, TuneError, parse_size
    from stream.config import DEFAULT_MODEL

    models = [Path(m).resolve() for m in args.model] or [DEFAULT_MODEL]
    for m in models:
        if m.suffix.lower() != ".onnx" or not m.is_file():
            raise TuneError(f"--model {m}: not an ONNX file here (tune makes its variants from ONNX models)")
        if probe(m) is None:
            raise TuneError(f"--model {m}: not a segstream ONNX model (no metadata)")
    sizes = [parse_size(s) for s in _csv(args.sizes)]
    precisions = _csv(args.precisions) if args.precisions else (["fp32", "int8"] if args.data else ["fp32"])
    backends = _csv(args.backends)
    for key, vals, allowed in (("--precisions", precisions, PRECISIONS), ("--backends", backends, BACKENDS)):
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise TuneError(f"{key} {','.join(vals)!r}: each must be one of {', '.join(allowed)}")
    if "int8" in precisions and not args.data:
        raise TuneError("--precisions int8 needs --data (its images calibrate the quantization)")
    try:
        batches = [int(b) for b in _csv(args.batches)]
    except ValueError:
        raise TuneError(f"--batches {args.batches!r}: expected integers, e.g. 1,4") from None
    if not batches or min(batches) < 1:
        raise TuneError(f"--batches {args.batches!r}: each must be a positive integer")
    cores = os.cpu_count() or 1
    if args.threads:
        try:
            threads = [tuple(int(v) for v in t.lower().split("x")) for t in _csv(args.threads)]
        except ValueError:
            raise TuneError(f"--threads {args.threads!r}: expected WORKERSxTHREADS, e.g. 2x1,1x2") from None
        if any(len(t) != 2 or min(t) < 1 for t in threads):
            raise TuneError(f"--threads {args.threads!r}: expected WORKERSxTHREADS, e.g. 2x1,1x2")
    else:
        threads = list(dict.fromkeys([(min(cores, 4), 1), (1, cores), (1, 1)]))
    torch_models = {m: m.with_suffix(".pt") for m in models if m.with_suffix(".pt").is_file()}
    tiled = source_wh is not None and any(source_wh[0] > w or source_wh[1] > h for w, h in sizes)
    return Grid(models, sizes, precisions, backends, batches, threads, torch_models, tiled)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from engines.data import DatasetNotFound, list_pairs
    from engines.errors import SegstreamError
    from engines.tune import (
        Result,
        TuneError,
        candidates,
        mark_pareto,
        materialize,
        miou_of,
        pick,
        pipeline_fps,
        plot,
        source_size,
        write_config,
    )
    from stream.config import DEFAULT_SOURCE

    if not args.target_fps > 0:
        raise TuneError(f"--target-fps {args.target_fps:g}: must be a positive number")
    if not args.budget > 0:
        raise TuneError(f"--budget {args.budget:g}: must be a positive number of minutes")
    if not 0 <= args.margin <= 2:
        raise TuneError(f"--margin {args.margin:g}: must be between 0 and 2")
    if args.frames < 10:
        raise TuneError(f"--frames {args.frames}: at least 10 (fewer measure start-up, not speed)")
    source = args.source or str(DEFAULT_SOURCE)
    if Path(source).exists():  # the runs start in their own folders
        source = str(Path(source).resolve())
    source_wh = source_size(source)  # a missing or unknown source fails here, in one line
    data = Path(args.data) if args.data else None
    if data is not None:
        if not data.is_dir():
            raise DatasetNotFound(f"--data {data}: folder not found")
        if not list_pairs(data):
            raise DatasetNotFound(f"--data {data}: no labelled images")
    grid = _grid(args, source_wh)
    out = Path(args.out).resolve()
    try:
        (out / "models").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TuneError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    cands = candidates(grid)
    frame_size = source_wh if grid.tiled else None
    console = Console(stderr=True)
    budget_s = args.budget * 60.0
    t0 = time.monotonic()
    results: list[Result] = []
    durations: list[float] = []
    mious: dict[tuple, tuple] = {}
    cols = [TextColumn("[bold]tune[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*cols, TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=len(cands))
        for i, cand in enumerate(cands):
            spent = time.monotonic() - t0
            guess = sorted(durations)[len(durations) // 2] if durations else 0.0
            if i > 0 and spent + guess > budget_s:
                console.print(
                    f"budget: {len(cands) - i} of {len(cands)} candidates left unmeasured "
                    f"({spent:.0f} s spent of {budget_s:.0f} s)"
                )
                break
            bar.update(task, description=f"{cand.label}  (budget left {budget_s - spent:.0f} s)")
            start = time.monotonic()
            res = Result(cand)
            try:
                res.candidate = cand = materialize(cand, out / "models", data)
                figures = pipeline_fps(cand, source, args.frames, out / "runs" / f"{i:03d}", args.sink)
                if "error" in figures:
                    res.error = figures["error"]
                else:
                    res.fps, res.latency_p50_ms = figures["fps"], figures["latency_p50_ms"]
                    res.drops, res.frames = figures["drops"], figures["frames"]
                    if data is not None:
                        key = (cand.model, cand.infer_mode, cand.infer_scale)
                        if key not in mious:
                            mious[key] = miou_of(
                                cand.model, cand.infer_mode, cand.infer_scale, data, args.limit, frame_size
                            )
                        res.miou, res.thin_iou = mious[key]
            except SegstreamError as e:  # this candidate cannot run (a quantization, a model): the rest can
                res.error = str(e)
            res.seconds = time.monotonic() - start
            durations.append(res.seconds)
            results.append(res)
            bar.advance(task)

    mark_pareto(results)
    # the choice is run once more: a figure taken while the machine was briefly idle must not decide,
    # so the written config is one that reached the target twice (with --margin to spare)
    need = args.target_fps * (1.0 + args.margin)
    chosen = pick(results, need)
    for _ in range(3):
        if chosen is None or time.monotonic() - t0 > budget_s + 60:
            break
        console.print(f"confirming: {chosen.candidate.label}")
        again = pipeline_fps(chosen.candidate, source, args.frames, out / "runs" / "confirm", args.sink)
        chosen.confirmed_fps = again.get("fps", 0.0)
        if chosen.speed >= need:
            break
        chosen = pick(results, need)
    table = Table(title=f"segstream tune: target {args.target_fps:g} fps on {Path(source).name}")
    for col in ("configuration", "fps", "p50 ms", "drops", "mIoU", "Pole", "Sign", "Ped.", "Pareto", ""):
        table.add_column(col, justify="left" if col == "configuration" else "right")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    for r in sorted(results, key=lambda r: -(r.fps or 0)):
        if r.error:
            table.add_row(r.candidate.label, "[red]failed", "", "", "", "", "", "", "", r.error[:60])
            continue
        thin = [pct(r.thin_iou.get(n)) for n in ("Pole", "SignSymbol", "Pedestrian")]
        fps = f"{r.fps:.1f}" + (f" / {r.confirmed_fps:.1f}" if r.confirmed_fps is not None else "")
        table.add_row(
            r.candidate.label,
            fps,
            f"{r.latency_p50_ms:.0f}",
            str(r.drops),
            pct(r.miou),
            *thin,
            "yes" if r.pareto else "",
            "[bold green]<- chosen" if r is chosen else ("" if r.speed >= need else "below target"),
        )
    term = Console()
    (term if term.is_terminal else Console(width=160)).print(table)
    (out / "tune.json").write_text(
        json.dumps(
            {
                "target_fps": args.target_fps,
                "source": source,
                "source_size": source_wh,
                "data": str(data) if data else None,
                "budget_min": args.budget,
                "measured": len(results),
                "candidates": len(cands),
                "results": [r.to_dict() for r in results],
                "chosen": chosen.candidate.label if chosen else None,
            },
            indent=2,
        )
    )
    try:
        png = str(plot(results, args.target_fps, out / "pareto.png", chosen))
    except ImportError:
        png = "no plot (matplotlib is not installed: pip install 'segstream[train]')"
    print(f"wrote {out / 'tune.json'}, {png}")
    if chosen is None:
        fastest = max((r for r in results if r.fps is not None), key=lambda r: r.speed, default=None)
        best = f"fastest: {fastest.candidate.label} at {fastest.speed:.1f} fps" if fastest else "none ran"
        print(f"segstream tune: no configuration reached {need:g} fps, twice ({best})", file=sys.stderr)
        return 1
    comment = [
        f"segstream tune --target-fps {args.target_fps:g}: {chosen.candidate.label}",
        f"measured {chosen.fps:.1f} and {chosen.confirmed_fps:.1f} fps"
        + (f", mIoU {100 * chosen.miou:.1f}%" if chosen.miou is not None else "")
        + f" on {Path(source).name}",
    ]
    cfg = write_config(out / "best.toml", chosen.candidate, comment)
    print(f"wrote {cfg}: {chosen.candidate.label} ({chosen.speed:.1f} fps)")
    print(f"use it: segstream run {args.source or ''} --config {cfg}".replace("  ", " "))
    return 0
