#!/usr/bin/env python3
"""Scaled vs tiled inference on real frames: mIoU (thin classes called out) and fps per mode and size.

Data (CamVid is 480x360 in the SegNet version, so larger frames are made from it):
- ``up2`` / ``up4``: CamVid val upscaled to 960x720 and 1920x1440 (bilinear; labels nearest). No new
  detail: this measures what tiling does to a model when objects appear 2x / 4x larger than it trained on.
- ``mosaic``: 2x2 mosaics of CamVid val frames, 960x720 with objects at the model's native scale (a
  camera with more pixels and a wider view: the case tiling is for).
- the real clips (no labels): fps of the whole `segstream run` pipeline per mode (--stats-json).

Writes a JSON with every figure, a Markdown table on stdout and a PNG figure (mIoU and thin-class IoU
per mode and size, with fps).

  python3 tools/bench_highres.py --data ../shared/data/camvid/val --limit 12 \\
      --clip ../shared/data/video/solidWhiteRight.mp4 \\
      --json docs/highres/bench.json --png docs/highres/bench.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines import tiling  # noqa: E402
from engines.data import list_pairs  # noqa: E402
from engines.metrics import ConfusionMatrix  # noqa: E402
from engines.runtime import load  # noqa: E402

THIN = ("Pole", "SignSymbol", "Pedestrian")
# (data set, mode, infer scale): tiled at 0.5 on 1920x1440 infers a 960x720 frame in tiles
CASES = [
    ("up2", "scaled", 1.0),
    ("up2", "tiled", 1.0),
    ("up4", "scaled", 1.0),
    ("up4", "tiled", 0.5),
    ("up4", "tiled", 1.0),
    ("mosaic", "scaled", 1.0),
    ("mosaic", "tiled", 1.0),
]


def frames(kind: str, pairs: list[tuple[Path, Path]]):
    """(image, label) pairs of one data set, made on the fly from the 480x360 originals."""
    loaded = [(cv2.imread(str(i)), cv2.imread(str(lab), cv2.IMREAD_GRAYSCALE)) for i, lab in pairs]
    if kind in ("up2", "up4"):
        f = 2 if kind == "up2" else 4
        for img, lab in loaded:
            yield (
                cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR),
                cv2.resize(lab, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST),
            )
    else:
        for i in range(0, len(loaded) - 3, 4):
            q = loaded[i : i + 4]
            yield tuple(
                np.vstack([np.hstack([q[0][k], q[1][k]]), np.hstack([q[2][k], q[3][k]])]) for k in (0, 1)
            )


def measure(rt, pairs, kind: str, mode: str, scale: float) -> dict:
    names = list(rt.meta.classes.names)
    cm = ConfusionMatrix(rt.meta.classes.num_classes, rt.meta.classes.ignore_index)
    times, size = [], None
    for img, lab in frames(kind, pairs):
        size = f"{img.shape[1]}x{img.shape[0]}"
        t0 = time.perf_counter()
        ids, _ = tiling.predict(rt, [img], mode, scale)[0]
        times.append(time.perf_counter() - t0)
        cm.update(lab, ids)
    s = cm.summary(names)
    work = tiling.work_image(img, rt.meta.input_size[::-1], scale) if mode == "tiled" else None
    tiles = (
        len(tiling.TileGrid.make(work.shape[:2], rt.meta.input_size[::-1]).origins) if mode == "tiled" else 1
    )
    return {
        "data": kind,
        "size": size,
        "mode": mode,
        "scale": scale,
        "tiles": tiles,
        "images": len(times),
        "miou": s["miou"],
        "thin": {n: s["iou"][names.index(n)] for n in THIN},
        "fps": len(times) / sum(times),
    }


def pipeline_fps(clip: Path, mode: str, frames_n: int, threads: int | None) -> dict:
    """fps of the whole `segstream run` pipeline on a clip (masks to an image folder, no encoding)."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        cmd = [sys.executable, "-m", "stream", "run", str(clip), "--infer-mode", mode]
        cmd += ["--max-frames", str(frames_n), "--stats-json", str(stats), "--no-progress"]
        cmd += ["--sink", f"images:{tmp}/m?what=mask"] + (["--threads", str(threads)] if threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if out.returncode != 0:
            raise SystemExit(f"segstream run failed on {clip}: {out.stderr.strip()[-300:]}")
        rep = json.loads(stats.read_text())
    w, h = _clip_size(clip)
    return {"clip": clip.name, "size": f"{w}x{h}", "mode": mode, "frames": rep["frames"], "fps": rep["fps"]}


def _clip_size(clip: Path) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(clip))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


def plot(rows: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['data']} {r['size']}\n{r['mode']}" + (f" x{r['scale']:g}" if r["mode"] == "tiled" else "")
        for r in rows
    ]
    x = np.arange(len(rows))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 7), dpi=100, sharex=True)
    width = 0.2
    a1.bar(x - 1.5 * width, [100 * r["miou"] for r in rows], width, label="mIoU", color="0.4")
    for k, n in enumerate(THIN):
        a1.bar(x + (k - 0.5) * width, [100 * (r["thin"][n] or 0) for r in rows], width, label=n)
    a1.set_ylabel("IoU (%)")
    a1.legend(ncol=4, fontsize=8)
    a1.set_title(f"{model} on CamVid val: scaled vs tiled")
    a2.bar(x, [r["fps"] for r in rows], 0.5, color="tab:green")
    a2.set_ylabel("fps (model + stitch, 1 thread)")
    a2.set_yscale("log")
    a2.set_xticks(x, labels, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="CamVid split folder (images/, labels/)")
    p.add_argument("--model", default=str(REPO / "stream" / "assets" / "default.onnx"))
    p.add_argument("--limit", type=int, default=12, help="images (mosaics use 4 per frame)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clip", type=Path, action="append", default=[], help="clip for pipeline fps")
    p.add_argument("--clip-frames", type=int, default=40)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args()
    pairs = list_pairs(args.data)[: args.limit]
    if not pairs:
        raise SystemExit(f"{args.data}: no labelled images")
    rt = load(args.model, device="cpu", threads=args.threads)
    rows = []
    for kind, mode, scale in CASES:
        r = measure(rt, pairs, kind, mode, scale)
        rows.append(r)
        print(
            f"# {kind} {r['size']} {mode} x{scale:g}: mIoU {100 * r['miou']:.1f} fps {r['fps']:.2f}",
            file=sys.stderr,
        )
    rt.close()
    clips = [pipeline_fps(c, m, args.clip_frames, None) for c in args.clip for m in tiling.MODES]
    print("| data | size | mode | tiles | mIoU | " + " | ".join(THIN) + " | fps |")
    print("|---|---|---|---|---|" + "---|" * len(THIN) + "---|")
    for r in rows:
        mode = r["mode"] + (f" x{r['scale']:g}" if r["mode"] == "tiled" else "")
        thin = " | ".join(f"{100 * (r['thin'][n] or 0):.1f}" for n in THIN)
        head = f"| {r['data']} | {r['size']} | {mode} | {r['tiles']} | {100 * r['miou']:.1f}"
        print(f"{head} | {thin} | {r['fps']:.2f} |")
    if clips:
        print("\n| clip | size | mode | frames | pipeline fps |\n|---|---|---|---|---|")
        for c in clips:
            print(f"| {c['clip']} | {c['size']} | {c['mode']} | {c['frames']} | {c['fps']:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"model": Path(args.model).name, "rows": rows, "clips": clips, "images": len(pairs)}
        args.json.write_text(json.dumps(doc, indent=2))
    if args.png:
        plot(rows, args.png, Path(args.model).name)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
