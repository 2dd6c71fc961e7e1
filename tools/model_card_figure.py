"""Draws the model card's picture: validation frames with ground truth and prediction overlays.

    python tools/model_card_figure.py --model stream/assets/fastscnn-camvid-heldout.onnx \
        --data ../shared/data/camvid/val --out docs/val_overlays.png

Rows are frames; columns are the image, the ground-truth overlay and the model's overlay (void pixels of the
ground truth are left uncoloured).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from engines import runtime
from stream.overlay import blend, colorize, legend_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="split folder with images/ and labels/")
    ap.add_argument("--out", default="docs/val_overlays.png")
    ap.add_argument("--frames", nargs="*", default=["0016E5_07959", "0016E5_08037", "0016E5_08117"])
    ap.add_argument("--scale", type=float, default=0.5, help="output scale of each tile")
    args = ap.parse_args()

    rt = runtime.load(args.model, threads=2)
    classes = rt.meta.classes
    lut = classes.lut_bgr()
    data = Path(args.data)
    rows = []
    for name in args.frames:
        img = cv2.imread(str(data / "images" / f"{name}.jpg"))
        label = cv2.imread(str(data / "labels" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        if img is None or label is None:
            raise SystemExit(f"{data}: frame {name} not found")
        pred = rt.predict([img], full_size=True).masks[0]
        gt = blend(img, colorize(label, lut), 0.6)
        gt[label == classes.ignore_index] = img[label == classes.ignore_index]
        tiles = [img, gt, blend(img, colorize(pred, lut), 0.6)]
        tiles = [
            cv2.resize(t, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA) for t in tiles
        ]
        rows.append(np.hstack(tiles))
    grid = np.vstack(rows)
    legend = legend_image(classes)
    pad = np.full((grid.shape[0], legend.shape[1] + 8, 3), 32, np.uint8)
    pad[4 : 4 + legend.shape[0], 4 : 4 + legend.shape[1]] = legend[: grid.shape[0] - 4]
    out = np.hstack([grid, pad])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, out)
    print(f"wrote {args.out} ({out.shape[1]}x{out.shape[0]})")


if __name__ == "__main__":
    main()
