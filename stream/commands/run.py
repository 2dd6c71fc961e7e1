"""`segstream run [SOURCE]`: segment a video stream with the supervised multi-process pipeline.

With no arguments it runs the bundled model on the bundled sample clip and writes
./segstream-out.mp4. Ctrl-C drains what is in flight, finalizes the outputs and exits 0 (130, with
nothing written, when it comes before the first frame was written). If the overlay stage is restarted on
a live source, the video continues in a new segment file (out.001.mp4, ...); the summary names them all.
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
        "source",
        nargs="*",
        default=[],
        help="file, webcam:N, rtsp://..., images:DIR, synthetic://; several: one stream each (ids 0, 1, "
        "...), batched through shared inference",
    )
    p.add_argument(
        "--model", default=None, help=f"model file (.onnx/.engine/.pt; default {DEFAULT_MODEL.name})"
    )
    p.add_argument(
        "--backend",
        default="auto",
        metavar="NAME|URI",
        help="auto, tensorrt, onnxruntime, torch, or triton://HOST:PORT/MODEL[?shm=auto|on|off] for a model "
        "served by Triton (the infer stage becomes its gRPC client; no --model)",
    )
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
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="GPU, file streams: wait at most this long to fill a batch (default 5; live streams never wait)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local infer workers (default: files one per core, at most 4; live sources 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="inference threads per worker (default: the cores divided among the workers; with "
        "--threads, workers get cores of their own when one is left over)",
    )
    p.add_argument("--opacity", type=float, default=0.5, metavar="F")
    p.add_argument("--legend", action="store_true", help="draw the class legend")
    p.add_argument(
        "--shade-uncertain",
        type=float,
        metavar="P",
        help="overlay: hatch and darken pixels whose confidence (max probability) is below P, e.g. 0.6",
    )
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
    p.add_argument(
        "--remote-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="with --remote-infer: end the run with an error when no infer worker returned a result for S "
        "seconds while frames wait (default 60)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar / status line")
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="with --threads, do not give infer workers processors of their own",
    )
    from stream.config import add_infer_mode_arguments

    add_infer_mode_arguments(p)
    p.add_argument(
        "--depth",
        metavar="DEPTH_URI",
        help="RGB-D models: the depth stream: a folder of 16-bit PNGs in mm (0 = none; names in ms are "
        "timestamps, else ?fps=N), a depth video (16-bit levels are mm; 8-bit needs ?max_mm=M or "
        "?scale_mm=S; ?offset_ms=), or synthetic://?size=WxH&fps=N (matches synthetic:// colour). A colour "
        "frame without a depth frame is skipped and counted as unpaired",
    )
    p.add_argument(
        "--depth-pairing",
        choices=("index", "timestamp"),
        default=None,
        help="pair colour frame k with depth frame k (index, the default), or with the depth frame nearest "
        "in time within --depth-tolerance-ms (timestamp: PTS, file names, index/fps; live sources: "
        "arrival time)",
    )
    p.add_argument(
        "--depth-tolerance-ms",
        type=float,
        default=None,
        metavar="MS",
        help="timestamp pairing: the largest colour-to-depth time difference that pairs (default 20)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="live sources: step the model input size down when frames drop, back up when there is "
        "headroom (changes are logged and counted in --stats-json)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="run configuration (TOML or JSON, keys as in stream.config.PipelineConfig, e.g. written by "
        "`segstream tune`; [[streams]] tables with id, uri, sinks, live, max_frames for several streams); "
        "options given on the command line override it",
    )
    p.add_argument(
        "--control",
        default=None,
        metavar="ENDPOINT",
        help="serve the control API here (tcp://127.0.0.1:PORT or ipc://PATH): `segstream streams "
        "add|remove|list --control ENDPOINT` changes the streams while the run goes on",
    )
    p.add_argument(
        "--control-token",
        default=None,
        metavar="FILE",
        help="every control request must carry the token in FILE (needed to bind --control beyond loopback)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow unencrypted binds beyond loopback (zmq-pub without CURVE, http live view, "
        "--remote-infer); without it such a run stops before starting",
    )


# command-line option (argparse dest) -> run-config key, for options a --config file may also set
_ARG_KEYS = {
    "source": "source",
    "model": "model",
    "backend": "backend",
    "device": "device",
    "sink": "sinks",
    "max_frames": "max_frames",
    "batch": "batch",
    "batch_wait_ms": "batch_deadline_ms",
    "workers": "workers",
    "threads": "threads",
    "opacity": "opacity",
    "legend": "legend",
    "shade_uncertain": "shade_uncertain",
    "live": "live",
    "stats_json": "stats_json",
    "slots": "slots",
    "no_shm": "shm",
    "remote_infer": "remote_infer",
    "stall_timeout": "stall_timeout_s",
    "remote_timeout": "remote_timeout_s",
    "no_progress": "progress",
    "no_pin": "pin_cpus",
    "infer_mode": "infer_mode",
    "infer_scale": "infer_scale",
    "tile_overlap": "tile_overlap",
    "adaptive": "adaptive",
    "depth": "depth",
    "depth_pairing": "depth_pairing",
    "depth_tolerance_ms": "depth_tolerance_ms",
    "control": "control",
    "control_token": "control_token",
}
_NEGATED = {"no_shm", "no_pin", "no_progress"}


def given_options(args: argparse.Namespace) -> dict:
    """The run-config keys of the options the user set (they differ from the option's default)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    defaults = vars(p.parse_args([]))
    out = {}
    for dest, key in _ARG_KEYS.items():
        v = getattr(args, dest, defaults.get(dest))
        if v == defaults.get(dest):
            continue
        if dest in _NEGATED:
            v = not v
        elif dest in ("sink", "remote_infer"):
            v = list(v)
        elif dest == "source":  # several sources: one stream each (stream.streams)
            if len(v) > 1:
                out["streams"] = [{"id": str(i), "uri": u} for i, u in enumerate(v)]
                continue
            v = v[0]
        out[key] = v
    return out


def config_from_args(args: argparse.Namespace):
    from engines.errors import SegstreamError
    from stream.config import DEFAULT_MODEL, DEFAULT_OUTPUT, DEFAULT_SOURCE, PipelineConfig, load_run_config

    # a --config file (e.g. from `segstream tune`) is the base; options typed on the command line win
    d = load_run_config(args.config) if getattr(args, "config", None) else {}
    d.update(given_options(args))
    backend = str(d.get("backend") or "auto")
    if backend.startswith("triton://"):
        # a served model is the model: its URI goes where a model file would (engines.runtime.load)
        if d.get("model"):
            raise SegstreamError(f"--backend {backend} serves the model; leave out --model {d['model']}")
        from engines.runtime.triton import parse_uri

        parse_uri(backend)  # a malformed URI is refused here, before anything starts
        d.update(model=backend, backend="auto")
    model = d.get("model") or str(DEFAULT_MODEL)
    source = d.get("source") or str(DEFAULT_SOURCE)
    from pathlib import Path

    if not d.get("model") and not Path(model).is_file():
        raise SegstreamError(f"no --model given and the bundled model {model} is missing (pass --model FILE)")
    if not d.get("source") and not Path(source).is_file():
        raise SegstreamError(f"no SOURCE given and the bundled clip {source} is missing")
    sinks = list(d.get("sinks") or []) or [DEFAULT_OUTPUT]
    live = d.get("live")
    streams = d.get("streams") or []
    if streams:
        streams = fill_stream_sinks(streams, list(d.get("sinks") or []))
        d["streams"] = streams
        # malformed tables are named by PipelineConfig's validation below
        all_live = all(
            isinstance(t, dict) and isinstance(t.get("uri"), str) and is_live(t["uri"], t.get("live", live))
            for t in streams
        )
    else:
        all_live = is_live(source, live)
    # what the user left open is filled in for this machine and source kind (stream.cpus)
    budget = cpus.budget(all_live, workers=d.get("workers"), threads=d.get("threads"))
    d.update(source=source, model=model, sinks=sinks, workers=budget.workers, threads=budget.threads)
    if d.get("adaptive") and d.get("batch") is None:
        d["batch"] = 1  # frames of different sizes never share a batch
    return PipelineConfig.from_dict(d)


def check_depth(cfg, model: dict) -> None:
    """An RGB-D model needs --depth, and --depth needs an RGB-D model: one line, before any stage starts."""
    from engines.meta import ModelMeta
    from engines.runtime.inputs import is_rgbd

    meta = ModelMeta.from_json(model["meta"])
    if is_rgbd(meta) or cfg.depth is not None:  # engines.depth imports OpenCV: only when it matters
        from engines.depth import require_depth

        require_depth(meta, cfg.depth is not None, "give --depth DEPTH_DIR")
    if cfg.wants_depth() and cfg.depth is None:
        from stream.config import ConfigError

        raise ConfigError("a zmq-pub sink republishes depth (?depth=) but the run has no --depth")
    if cfg.depth is not None:  # opened once here, so a bad depth source is one line before any stage
        from stream.sources.depth import open_depth
        from stream.sources.depth_pairing import DepthPairer

        pairer = DepthPairer(open_depth(cfg.depth), cfg.depth_pairing, cfg.depth_tolerance_ms)
        try:
            pairer.open(is_live(cfg.source, cfg.live))
        finally:
            pairer.close()


def check_adaptive(cfg, model: dict) -> None:
    """--adaptive feeds the model smaller inputs: an ONNX graph exported for one size cannot take them."""
    from engines.meta import ModelMeta
    from stream.config import ConfigError

    meta = ModelMeta.from_json(model["meta"])
    if model.get("backend") == "onnxruntime" and not meta.extra.get("onnx", {}).get("dynamic_hw", False):
        w, h = meta.input_size
        raise ConfigError(
            f"config key 'adaptive' = True: {cfg.model} takes {w}x{h} only (exported with fixed H/W); "
            "export it with dynamic H/W (the default of `segstream export`) to adapt its input size"
        )


def fill_stream_sinks(streams: list, run_sinks: list[str]) -> list:
    """A stream without sinks of its own gets the run's --sink specs, else segstream-out-ID.mp4; ``{stream}``
    in a spec is the stream id (stream.streams checks that no two streams share a sink)."""
    from stream.streams import MULTI_DEFAULT_SINK

    out = []
    for t in streams:
        if isinstance(t, dict) and "sinks" not in t:
            t = {**t, "sinks": list(run_sinks) or [MULTI_DEFAULT_SINK]}
        out.append(t)
    return out


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
        import os

        self.console = None
        self.enabled = False
        # rich only for a terminal (or one rich is told to assume): importing it is start-up time
        if enabled and (
            sys.stderr.isatty() or os.environ.get("FORCE_TERMINAL") or os.environ.get("TTY_COMPATIBLE")
        ):
            from rich.console import Console

            self.console = Console(stderr=True)
            self.enabled = self.console.is_terminal
        self.bar = None
        self.task = None

    def __call__(self, metrics, info) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        # every stream's source and sink (stream 0's are "capture"/"overlay", others "capture@ID", ...)
        srcs = [v.get("source", {}) for k, v in info.items() if k.split("@")[0] == "capture"]
        src = srcs[0] if len(srcs) == 1 else {"live": any(s.get("live") for s in srcs), "total": None}
        written = sum(v.get("written", 0) for k, v in info.items() if k.split("@")[0] == "overlay")
        lat = metrics.latency().summary_ms()
        drops = sum(metrics.drops().values())
        fps = sum(s.get("fps", 0.0) for k, s in metrics.stages.items() if k.split("@")[0] == "overlay")
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


def written_files(cfg, out) -> list:
    """The outputs that exist: every video segment the overlay stage wrote, image folders it filled."""
    from pathlib import Path

    files = [Path(f).resolve() for f in out.files]
    if out.frames > 0:
        for s in [s for spec in cfg.stream_specs() for s in spec.sinks]:
            if s.startswith("images:"):
                files.append(Path(s.split("?", 1)[0].removeprefix("images:").removeprefix("//")).resolve())
    return [f for f in files if f.exists()]


def run(args: argparse.Namespace) -> int:
    import json

    from engines.errors import SegstreamError
    from stream.pipeline import probe_model, probe_source, run_pipeline
    from stream.uri import open_sink

    cfg = config_from_args(args)
    # URI, option, missing-input and unwritable-output errors now, before the model loads or any process
    # starts (a file source is opened and closed once; its frame size sizes the ring)
    specs = cfg.stream_specs()
    sources = []
    for spec in specs:
        try:
            sources.append(probe_source(cfg.for_stream(spec)))
            for s in spec.sinks:
                open_sink(s).preflight()
        except SegstreamError as e:
            if len(specs) == 1:
                raise
            raise SegstreamError(f"stream '{spec.id}': {e}") from None
    source = sources[0]
    all_sinks = [s for spec in specs for s in spec.sinks]
    from stream.exposure import check_exposure

    # on the user's terminal before stages start: the stages' own output goes to their log files
    for line in check_exposure(all_sinks, cfg.remote_infer, insecure=args.insecure):
        print(f"segstream: {line}", file=sys.stderr)
    if cfg.control:
        from stream.control import check_endpoint, read_token

        check_endpoint(cfg.control, read_token(cfg.control_token), args.insecure)
    model = probe_model(cfg)
    check_depth(cfg, model)
    if cfg.adaptive:
        check_adaptive(cfg, model)
    progress = Progress(cfg.progress)
    try:
        out = run_pipeline(cfg, on_progress=progress, model=model, source=source, insecure=args.insecure)
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
        if out.failed_stage is None:
            print(f"segstream run: error: {out.message}", file=sys.stderr)
        else:
            print(f"segstream run: stage '{out.failed_stage}' failed: {out.message}", file=sys.stderr)
        for line in rep.get("failed_stage_log", []):
            print(f"  {out.failed_stage}| {line}", file=sys.stderr)
        for path in written_files(cfg, out):
            print(f"segstream run: kept {path} ({out.frames} frames before the failure)", file=sys.stderr)
        return 1
    if out.interrupted and out.frames == 0:
        print("segstream run: interrupted before any frame was written; no output", file=sys.stderr)
        return 130
    lat = rep["latency_ms"]
    drops = rep["drops"]
    print(
        f"{out.frames} frames in {out.wall_s:.1f} s: {rep['fps']:.1f} fps; latency capture->output "
        f"p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms"
    )
    if rep.get("glass_to_output_ms"):  # RTSP: from the camera's own capture time (its sender reports)
        g = rep["glass_to_output_ms"]
        print(f"latency glass->output p50 {g['p50']:.1f} ms, p95 {g['p95']:.1f} ms, p99 {g['p99']:.1f} ms")
    for sid, link in rep.get("streams", {}).items():
        if link.get("outages"):
            print(
                f"stream {sid} ({link.get('uri', '?')}): {link['reconnects']} reconnect(s), "
                f"{link['outages']} outage(s), {link['outage_s']:.1f} s without a stream"
            )
    if len(rep.get("stream_stats", {})) > 1 or out.failed_streams:
        for sid, st in rep.get("stream_stats", {}).items():
            sl = st.get("latency_ms", {})
            print(
                f"stream {sid}: {st.get('frames', 0)} frames, {st.get('fps', 0.0):.1f} fps; latency p50 "
                f"{sl.get('p50', 0.0):.1f} ms, p99 {sl.get('p99', 0.0):.1f} ms"
                + (f"; drops {sum(st['drops'].values())}" if st.get("drops") else "")
            )
    if drops:
        print("drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    if rep["restarts"]:
        print("restarts: " + ", ".join(f"{k} {v}" for k, v in sorted(rep["restarts"].items())))
    malformed = {
        k: v["extra"]["malformed"] for k, v in rep["stages"].items() if v.get("extra", {}).get("malformed")
    }
    if malformed:
        print("malformed messages dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(malformed.items())))
    for path in written_files(cfg, out):
        print(f"wrote {path}")
    if out.interrupted:
        print("interrupted: stopped early, outputs finalized", file=sys.stderr)
    if out.failed_streams:  # the others went on; what the failed ones wrote is kept
        for sid, why in sorted(out.failed_streams.items()):
            print(f"segstream run: error: stream {sid}: {why}", file=sys.stderr)
        return 2
    return 0
