"""`segstream export`: training checkpoint -> verified ONNX model with embedded metadata."""

from __future__ import annotations

import argparse

HELP = "export a checkpoint (.pt) to ONNX (ids + confidence outputs, metadata embedded, verified)"
DESCRIPTION = (
    "Export a segstream training checkpoint to ONNX (opset >= 17). The graph takes 'images' "
    "(float32 NCHW, normalized; an RGB-D model two inputs, 'image' N x 3 x H x W and 'depth' "
    "N x 1 x H x W, normalized as its metadata says) and returns 'ids' (uint8 argmax) and "
    "'confidence' (uint8 max softmax x 255); batch, height and width are dynamic where the network "
    "allows. The model's metadata (classes, palette, normalization, input size) is embedded, and the "
    "export is checked against PyTorch (max logits difference, mask agreement) before it is written."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="training checkpoint (.pt) written by `segstream train`")
    p.add_argument("-o", "--output", help="ONNX file to write (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--fp16", action="store_true", help="FP16 weights/arithmetic inside, float32 I/O")
    p.add_argument(
        "--static", action="store_true", help="fixed H/W at the training size (batch stays dynamic)"
    )
    p.add_argument(
        "--verify-data", metavar="DIR", help="real images (DIR or DIR/images) to verify against PyTorch"
    )
    p.add_argument(
        "--verify-count", type=int, default=4, metavar="N", help="images used to verify (default 4)"
    )
    g = p.add_argument_group(
        "Triton",
        "also write a Triton model repository (CHECKPOINT may then be an .onnx or .engine/.plan too)",
    )
    g.add_argument("--triton-repo", metavar="DIR", help="write DIR/NAME/{config.pbtxt,1/model.*}")
    g.add_argument(
        "--triton-name", default="segstream", metavar="NAME", help="model name (default segstream)"
    )
    g.add_argument("--triton-kind", default="gpu", choices=("gpu", "cpu"), help="instance kind (default gpu)")
    g.add_argument("--triton-instances", type=int, default=1, metavar="N", help="instances per device")
    g.add_argument(
        "--triton-max-batch", type=int, default=None, metavar="N", help="max batch (default: model's)"
    )
    g.add_argument(
        "--triton-queue-delay-us", type=int, default=2000, metavar="US", help="dynamic batching queue delay"
    )


def write_triton_repo(args: argparse.Namespace, model: str, con) -> None:
    from engines.triton_repo import RepoOptions, write_repo

    opts = RepoOptions(
        name=args.triton_name,
        instances=args.triton_instances,
        kind=args.triton_kind,
        max_batch=args.triton_max_batch,
        queue_delay_us=args.triton_queue_delay_us,
    )
    folder = write_repo(model, args.triton_repo, opts)
    con.print(
        f"wrote Triton model repository {folder} (serve: tritonserver --model-repository {args.triton_repo})"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from engines.export import export_checkpoint

    if args.triton_repo and Path(args.checkpoint).suffix.lower() in (".onnx", ".engine", ".plan"):
        write_triton_repo(args, args.checkpoint, Console(soft_wrap=True))
        return 0

    rep = export_checkpoint(
        args.checkpoint,
        args.output,
        opset=args.opset,
        fp16=args.fp16,
        static=args.static,
        verify_dir=args.verify_data,
        verify_count=args.verify_count,
    )
    con = Console(soft_wrap=True)
    for n in rep.notices:
        con.print(f"[yellow]notice:[/] {n}")
    v = rep.verification
    shape = "dynamic batch/H/W" if rep.dynamic_hw else "dynamic batch, fixed H/W"
    con.print(
        f"wrote {rep.path} ({rep.size_bytes / 1e6:.1f} MB, opset {rep.opset}, {rep.precision}, {shape}, "
        f"{'simplified' if rep.simplified else 'not simplified'})"
    )
    if v is not None:
        con.print(
            f"verified on {v.images}: max |logits diff| {v.max_abs_diff:.3g} (tolerance {v.tolerance:.3g}), "
            f"masks agree on {v.mask_agreement:.4%} of pixels"
        )
    if args.triton_repo:
        write_triton_repo(args, str(rep.path), con)
    return 0
