"""`segstream explain`: which pixels made a PyTorch model label a class (Grad-CAM, integrated gradients)."""

from __future__ import annotations

import argparse

from stream.config import ASSETS

HELP = "class-saliency heatmap for an image (Grad-CAM or integrated gradients; .pt models)"
DESCRIPTION = """Explain one class of a model's segmentation of IMAGE: writes OUT/<name>_<class>_<method>.png
(four panels side by side: image, colour mask, overlay, heatmap over the image) and
OUT/<name>_<class>_<method>_heatmap.png (8-bit grayscale saliency at the image's size).

--method gradcam: Grad-CAM on --layer (default: the last feature map before the classifier, Fast-SCNN's
'fusion' at 1/8). --method ig: integrated gradients from the mean image, --steps path points.
The class score is the class's logit summed over the pixels the model gives that class.

Only PyTorch checkpoints (.pt) can be explained: ONNX models and TensorRT engines are compiled
inference graphs without a backward pass, so there are no gradients to take.

examples:
  segstream explain data/camvid/val/images/0016E5_07959.png --class Car
  segstream explain --model runs/fastscnn/best.pt frame.png --class Road --method ig --out why/"""

DEFAULT_PT = ASSETS / "default.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("--model", default=str(DEFAULT_PT), help="a .pt checkpoint (default: the bundled model)")
    p.add_argument("--class", dest="class_name", required=True, metavar="NAME", help="class name (or id)")
    p.add_argument("--method", default="gradcam", choices=("gradcam", "ig"), help="default gradcam")
    p.add_argument("--layer", help="Grad-CAM layer: a module name of the network (default: per architecture)")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients path points (default 32)")
    p.add_argument(
        "--depth",
        metavar="FILE",
        help="RGB-D models: the image's 16-bit depth PNG in mm (default: ../depth/NAME.png beside IMAGE)",
    )
    p.add_argument("--out", default="explain", metavar="DIR", help="output folder (default ./explain)")
    p.add_argument("--threads", type=int, help="CPU threads")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cv2
    import numpy as np

    from engines.explain import ExplainError, explain, panels, refuse_compiled

    refuse_compiled(args.model)  # before loading anything: an ONNX file gets the reason at once
    path = Path(args.image)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if img is None:
        raise ExplainError(f"{args.image}: not found or not a readable image")
    import torch

    from engines.runtime.torch import model_from_checkpoint

    if args.threads:
        torch.set_num_threads(int(args.threads))
    net, meta, _ = model_from_checkpoint(args.model)
    depth = None
    beside = path.resolve().parent.parent / "depth" / f"{path.stem}.png"
    if args.depth or ("depth" in meta.extra and beside.is_file()):  # RGB-D: as predict finds depth
        from engines.depth import read_depth

        depth = read_depth(args.depth or beside)
    ex = explain(
        net,
        meta,
        img,
        args.class_name,
        method=args.method,
        layer=args.layer,
        steps=args.steps,
        depth_mm=depth,
    )
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExplainError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    stem = f"{path.stem}_{ex.class_name}_{ex.method}"
    files = [out / f"{stem}.png", out / f"{stem}_heatmap.png"]
    for f, picture in zip(
        files, (panels(img, ex, meta.classes), (ex.heatmap * 255).round().astype(np.uint8)), strict=True
    ):
        if not cv2.imwrite(str(f), picture):
            raise ExplainError(f"cannot write {f}")
    where = f"layer '{ex.layer}'" if ex.layer else f"{args.steps} steps"
    note = "" if ex.class_pixels else " (the model labels no pixel with it: the score sums every pixel)"
    print(f"{args.image}: {ex.method} ({where}) for '{ex.class_name}'{note}")
    for f in files:
        print(f"wrote {f}")
    return 0
