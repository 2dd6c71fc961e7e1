"""`segstream run [SOURCE]`: segment a video stream with the supervised multi-process pipeline.

With no arguments it runs the bundled model on the bundled sample clip and writes
./segstream-out.mp4. Ctrl-C drains what is in flight, finalizes the outputs and exits 0.
"""

from __future__ import annotations

import argparse
import sys

from stream import cpus

HELP = "segment a video stream (file, webcam, network, images, synthetic) in real time"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    from stream.config import DEFAULT_MODEL, DEFAULT_OUTPUT

    p.add_argument(
        "source", nargs="?", default=None, help="file, webcam:N, rtsp://..., images:DIR, synthetic://"
    )
    p.add_argument(
        "--model", default=None, help=f"model file (.onnx/.engine/.pt; default {DEFAULT_MODEL.name})"
    )
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--sink",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"output (repeatable): out.mp4, images:DIR, display, zmq-pub://..., http://... "
        f"(default {DEFAULT_OUTPUT})",
    )
    p.add_argument("--max-frames", type=int, default=None, metavar="N")
    p.add_argument("--batch", type=int, default=None, metavar="N", help="max inference batch")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="local infer workers")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="inference threads per worker (default: files half the cores, at most 4, "
        "pinned to their own cores; live sources every core)",
    )
    p.add_argument("--opacity", type=float, default=0.5, metavar="F")
    p.add_argument("--legend", action="store_true", help="draw the class legend")
    p.add_argument("--stats-json", default=None, metavar="PATH", help="write per-stage metrics at the end")
    p.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="treat the source as live (drop, newest wins) or as a file (never drop)",
    )
    p.add_argument("--slots", type=int, default=8, metavar="N", help="frames in flight (shared-memory slots)")
    p.add_argument(
        "--no-shm", action="store_true", help="send pixels through sockets instead of shared memory"
    )
    p.add_argument(
        "--remote-infer",
        nargs=2,
        default=None,
        metavar=("IN", "OUT"),
        help="also bind these tcp endpoints for `segstream worker infer` processes elsewhere",
    )
    p.add_argument("--stall-timeout", type=float, default=15.0, metavar="S", help="heartbeat timeout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / status line")
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="with --threads, do not give infer workers processors of their own",
    )


def config_from_args(args: argparse.Namespace):
    from engines.errors import SegstreamError
    from stream.config import DEFAULT_MODEL, DEFAULT_OUTPUT, DEFAULT_SOURCE, PipelineConfig

    model = args.model or str(DEFAULT_MODEL)
    source = args.source or str(DEFAULT_SOURCE)
    from pathlib import Path

    if args.model is None and not Path(model).is_file():
        raise SegstreamError(f"no --model given and the bundled model {model} is missing (pass --model FILE)")
    if args.source is None and not Path(source).is_file():
        raise SegstreamError(f"no SOURCE given and the bundled clip {source} is missing")
    sinks = list(args.sink) or [DEFAULT_OUTPUT]
    return PipelineConfig(
        source=source,
        model=model,
        backend=args.backend,
        device=args.device,
        sinks=sinks,
        max_frames=args.max_frames,
        batch=args.batch,
        workers=args.workers,
        threads=cpus.default_threads(is_live(source, args.live)) if args.threads is None else args.threads,
        opacity=args.opacity,
        legend=args.legend,
        live=args.live,
        stats_json=args.stats_json,
        slots=args.slots,
        shm=not args.no_shm,
        remote_infer=list(args.remote_infer or []),
        stall_timeout_s=args.stall_timeout,
        progress=not args.no_progress,
        pin_cpus=not args.no_pin,
    )


def is_live(source: str, live_flag: bool | None) -> bool:
    """Whether the source paces itself (webcam, network, synthetic) rather than being read as fast as the
    pipeline can (files, image folders). Constructing a source opens nothing."""
    if live_flag is not None:
        return live_flag
    from stream.sources.file import FileSource
    from stream.sources.images import ImageSource
    from stream.uri import open_source

    src = open_source(source)
    return getattr(src, "live", not isinstance(src, (FileSource, ImageSource)))


class Progress:
    """A rich progress bar with ETA for files, a status line for live sources."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.bar = None
        self.task = None

    def __call__(self, metrics, info) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        src = info.get("capture", {}).get("source", {})
        ov = info.get("overlay", {})
        written = ov.get("written", 0)
        lat = metrics.latency().summary_ms()
        drops = sum(metrics.drops().values())
        fps = metrics.stages.get("overlay", {}).get("fps", 0.0)
        status = f"{fps:5.1f} fps  p50 {lat['p50']:.0f} ms  p99 {lat['p99']:.0f} ms  drops {drops}"
        if self.bar is None:
            live = src.get("live", False)
            cols = [
                TextColumn("[bold]segstream[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            ]
            if live or not src.get("total"):
                cols = [TextColumn("[bold]segstream[/] {task.completed} frames")]
            self.bar = RichProgress(
                *cols, TextColumn("{task.description}"), console=self.console, transient=True
            )
            self.task = self.bar.add_task(status, total=None if live else src.get("total"))
            self.bar.start()
        self.bar.update(self.task, completed=written, description=status)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run(args: argparse.Namespace) -> int:
    import json

    from stream.pipeline import probe_model, run_pipeline
    from stream.uri import open_sink, open_source

    cfg = config_from_args(args)
    open_source(cfg.source)  # URI and option errors now, before any process starts
    for s in cfg.sinks:
        open_sink(s)
    model = probe_model(cfg)
    progress = Progress(cfg.progress)
    try:
        out = run_pipeline(cfg, on_progress=progress, model=model)
    finally:
        progress.stop()
    rep = out.report
    if cfg.stats_json:
        from pathlib import Path

        Path(cfg.stats_json).write_text(json.dumps(rep, indent=2))
    if out.fatal:
        print(f"segstream run: error: {out.message}", file=sys.stderr)
        return 2
    if not out.ok:
        print(f"segstream run: stage '{out.failed_stage}' failed: {out.message}", file=sys.stderr)
        for line in rep.get("failed_stage_log", []):
            print(f"  {out.failed_stage}| {line}", file=sys.stderr)
        return 1
    lat = rep["latency_ms"]
    drops = rep["drops"]
    print(
        f"{out.frames} frames in {out.wall_s:.1f} s: {rep['fps']:.1f} fps; latency capture->output "
        f"p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms"
    )
    if drops:
        print("drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    if rep["restarts"]:
        print("restarts: " + ", ".join(f"{k} {v}" for k, v in sorted(rep["restarts"].items())))
    from pathlib import Path

    for s in cfg.sinks:
        if s.startswith(("images:", "file:")) or ("://" not in s and s != "display"):
            body = s.split("?", 1)[0].removeprefix("file:").removeprefix("images:")
            print(f"wrote {Path(body).resolve()}")
    if out.interrupted:
        print("interrupted: stopped early, outputs finalized", file=sys.stderr)
    return 0
