"""`segstream build-engine`: ONNX model -> TensorRT engine file with the model's metadata in its header."""

from __future__ import annotations

import argparse

HELP = "compile an ONNX model into a TensorRT engine (fp32/fp16/int8, dynamic batch and resolution)"
DESCRIPTION = (
    "Build a TensorRT engine from a segstream ONNX model. Works with the full `tensorrt` package and "
    "with TensorRT-RTX (`tensorrt_rtx`). INT8 needs a Q/DQ model from `segstream quantize`. The engine "
    "carries the model's metadata, the TensorRT version and GPU it was built for, and the command "
    "that rebuilds it. Shapes are NxHxW (batch x height x width); default profile: batch 1..max_batch "
    "at the model's input size."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model written by `segstream export` or `segstream quantize`")
    p.add_argument("-o", "--output", help="engine file (default: MODEL.<precision>.engine)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="default fp16")
    p.add_argument("--min-shape", metavar="NxHxW", help="smallest input of the optimization profile")
    p.add_argument(
        "--opt-shape", metavar="NxHxW", help="input the engine is tuned for (default: model size, batch 1)"
    )
    p.add_argument("--max-shape", metavar="NxHxW", help="largest input of the optimization profile")
    p.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MiB")
    p.add_argument("--timing-cache", metavar="PATH", help="timing cache file (default: beside the engine)")
    p.add_argument("--verbose", action="store_true", help="print TensorRT's builder log")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from engines.build import Profile, build_engine, fmt_shape, parse_shape
    from engines.export import ExportError, get_meta, load_onnx

    model = Path(args.model)
    out = Path(args.output) if args.output else model.with_suffix(f".{args.precision}.engine")
    profile = None
    if args.min_shape or args.opt_shape or args.max_shape:
        try:
            default = Profile.default(get_meta(load_onnx(model), model))
        except ExportError as e:
            from engines.build import EngineBuildError

            raise EngineBuildError(str(e)) from None
        mn = parse_shape(args.min_shape) if args.min_shape else default.min
        opt = parse_shape(args.opt_shape) if args.opt_shape else (mn[0], *default.opt[1:])
        mx = parse_shape(args.max_shape) if args.max_shape else (max(opt[0], default.max[0]), *opt[1:])
        profile = Profile(mn, opt, mx)
    rep = build_engine(
        model,
        out,
        precision=args.precision,
        profile=profile,
        workspace_mb=args.workspace,
        timing_cache=args.timing_cache,
        verbose=args.verbose,
    )
    con = Console(soft_wrap=True)
    for n in rep.notices:
        con.print(f"[yellow]notice:[/] {n}")
    h = rep.header
    con.print(
        f"wrote {rep.path} ({rep.size_bytes / 1e6:.1f} MB, {h.precision}, built by {h.trt_flavour} "
        f"{h.trt_version} in {rep.seconds:.1f} s; profile {fmt_shape(h.profile.min)} .. "
        f"{fmt_shape(h.profile.max)}, opt {fmt_shape(h.profile.opt)})"
    )
    if rep.timing_cache:
        con.print(f"timing cache: {rep.timing_cache}")
    return 0
