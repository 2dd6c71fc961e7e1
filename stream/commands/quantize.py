"""`segstream quantize`: FP32 ONNX -> INT8 Q/DQ ONNX calibrated on real images."""

from __future__ import annotations

import argparse

HELP = "quantize an ONNX model to INT8 (Q/DQ) with calibration images; optional mIoU cost on a val split"
DESCRIPTION = (
    "Static INT8 quantization with ONNX Runtime (QDQ format, per-channel symmetric weights, symmetric "
    "activations, float biases: the form TensorRT builds into INT8 engines). The result keeps the "
    "model's metadata and runs in ONNX Runtime on CPU. With --val, the mIoU of the FP32 and INT8 "
    "models on that split is printed."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="FP32 ONNX model from `segstream export`")
    p.add_argument("--calib", required=True, metavar="DIR", help="calibration images (DIR or DIR/images)")
    p.add_argument("--count", type=int, default=32, metavar="N", help="calibration images used (default 32)")
    p.add_argument("-o", "--output", help="quantized model (default: MODEL.int8.onnx)")
    p.add_argument(
        "--method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="calibration method (default minmax)",
    )
    p.add_argument(
        "--val", metavar="DIR", help="validation split (images/ + labels/) to measure the mIoU cost"
    )
    p.add_argument(
        "--val-count", type=int, default=0, metavar="N", help="validation images used (default all)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from engines.quantize import quantize_model

    out = Path(args.output) if args.output else Path(args.model).with_suffix(".int8.onnx")
    rep = quantize_model(
        args.model,
        out,
        args.calib,
        count=args.count,
        val_dir=args.val,
        val_count=args.val_count,
        method=args.method,
    )
    con = Console(soft_wrap=True)
    con.print(
        f"wrote {rep.path} ({rep.size_bytes / 1e6:.1f} MB, INT8 Q/DQ, calibrated on "
        f"{rep.calib_images} images in {rep.seconds:.1f} s)"
    )
    if rep.int8_miou is not None:
        con.print(
            f"mIoU on {rep.val_images} val images: FP32 {rep.fp32_miou:.4f}, INT8 {rep.int8_miou:.4f} "
            f"(cost {rep.fp32_miou - rep.int8_miou:+.4f})"
        )
    return 0
