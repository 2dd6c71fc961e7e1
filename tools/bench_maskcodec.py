"""Encode/decode cost of the coco-rle and polygons mask encodings, ms per frame (median), on real CamVid
labels resized (nearest) to 480x360 and 1920x1080, beside raw/rle/png and pycocotools' own encoder.

    python tools/bench_maskcodec.py [--frames 8] [--repeat 5] [--clock wall|cpu]

Reads /work/shared-style data (../shared/data/camvid) when present, else the test fixtures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SIZES = [(480, 360), (1920, 1080)]


def labels(n: int) -> list[np.ndarray]:
    for folder in (
        REPO.parent / "shared" / "data" / "camvid" / "val" / "labels",
        REPO / "tests/fixtures/camvid/val/labels",
    ):
        paths = sorted(folder.glob("*.png"))[:n]
        if paths:
            print(f"labels: {len(paths)} from {folder}")
            return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]
    raise SystemExit("no CamVid labels found")


CLOCK = time.perf_counter  # --clock cpu: time.process_time, the CPU the encoder used (all threads);
# on a shared, loaded machine wall time mostly measures the wait for a core


def timed(fn, items, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = CLOCK()
        for it in items:
            fn(it)
        runs.append((CLOCK() - t0) / len(items))
    return 1000 * statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="what a ms is (default wall)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    from stream.maskcodec import segments
    from stream.messages import decode_plane, decode_segments, encode_mask

    base = labels(args.frames)
    variants = [
        ("raw", {}),
        ("rle", {}),
        ("png", {}),
        ("coco-rle", {}),
        ("coco-rle", {"components": True}),
        ("polygons", {"tolerance": 0.0}),
        ("polygons", {"tolerance": 1.0}),
        ("polygons", {"tolerance": 1.0, "components": True}),
    ]
    print(f"{'size':>9} {'encoding':<28} {'encode ms':>9} {'decode ms':>9} {'bytes':>9}")
    for w, h in SIZES:
        masks = [cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in base]
        for enc, opts in variants:
            payloads = [bytes(encode_mask(m, enc, opts)) for m in masks]
            e = timed(lambda m, enc=enc, opts=opts: encode_mask(m, enc, opts), masks, args.repeat)
            if enc in segments.FORMATS:
                d = timed(lambda p, enc=enc, w=w, h=h: decode_segments(p, enc, w, h), payloads, args.repeat)
            else:
                d = timed(
                    lambda p, enc=enc, w=w, h=h: decode_plane(p, enc, w, h, "mask"), payloads, args.repeat
                )
            name = enc + (
                "" if not opts else " " + json.dumps(opts, separators=(",", "=")).strip("{}").replace('"', "")
            )
            size = int(np.mean([len(p) for p in payloads]))
            print(f"{w}x{h:<5} {name:<28} {e:9.2f} {d:9.2f} {size:9,d}")
        try:
            from pycocotools import mask as mask_api
        except ImportError:
            continue

        def pyco(m: np.ndarray) -> None:
            for c in np.unique(m):
                mask_api.encode(np.asfortranarray((m == c).astype(np.uint8)))

        print(f"{w}x{h:<5} {'pycocotools encode, per class':<28} {timed(pyco, masks, args.repeat):9.2f}")


if __name__ == "__main__":
    main()
