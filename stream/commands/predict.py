"""`segstream predict`: class-id mask and colour overlay PNGs for images."""

from __future__ import annotations

import argparse

from stream.config import DEFAULT_MODEL

HELP = "segment images with a model: class-id mask PNG + colour overlay PNG per image"
DESCRIPTION = """Segment image files with a model file (.pt, .onnx, .engine). For each IMAGE writes
OUT/<name>_mask.png (uint8 class ids, full image size) and OUT/<name>_overlay.png (the image blended with
the class palette carried in the model file).

example:
  segstream predict --model runs/fastscnn/best.pt a.jpg b.jpg --out preds/"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="model file: .pt checkpoint, .onnx, .engine/.plan (default: the bundled model)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the palette (default 0.5)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda[:N]")
    p.add_argument("--threads", type=int, help="inference threads (CPU)")


def colorize(mask, lut_bgr):
    """Class ids (h, w) uint8 -> BGR image by palette lookup (cv2.LUT, no per-pixel Python)."""
    import cv2

    return cv2.LUT(cv2.merge([mask, mask, mask]), lut_bgr)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cv2

    from engines.errors import SegstreamError
    from engines.runtime import load

    if not 0.0 <= args.alpha <= 1.0:
        raise SegstreamError(f"--alpha {args.alpha}: must be between 0 and 1")
    frames = []
    for name in args.images:
        img = cv2.imread(name, cv2.IMREAD_COLOR) if Path(name).is_file() else None
        if img is None:
            raise SegstreamError(f"{name}: not found or not a readable image")
        frames.append(img)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rt = load(args.model, device=args.device, threads=args.threads)
    lut = rt.meta.classes.lut_bgr()
    for name, img in zip(args.images, frames, strict=True):
        mask = rt.predict([img], full_size=True).masks[0]
        stem = Path(name).stem
        cv2.imwrite(str(out / f"{stem}_mask.png"), mask)
        overlay = cv2.addWeighted(img, 1 - args.alpha, colorize(mask, lut), args.alpha, 0)
        cv2.imwrite(str(out / f"{stem}_overlay.png"), overlay)
        print(f"{name} -> {out / (stem + '_mask.png')}, {out / (stem + '_overlay.png')}")
    rt.close()
    return 0
