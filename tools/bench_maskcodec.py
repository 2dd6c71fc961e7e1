"""Encode/decode cost of the coco-rle and polygons mask encodings, ms per frame (median), on real CamVid
labels resized (nearest) to 480x360 and 1920x1080, beside raw/rle/png and pycocotools' own encoder.

    python tools/bench_maskcodec.py [--frames 8] [--repeat 5] [--clock wall|cpu] [--no-stage-settings]
    python tools/bench_maskcodec.py --steps [--clock cpu]   # where a polygons encode's time goes

Reads /work/shared-style data (../shared/data/camvid) when present, else the test fixtures. Runs with
the per-process settings every stage applies (stream.stages.base.tune_process), as the publisher's
encoders run inside the overlay stage; --no-stage-settings measures a plain Python process.
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


def steps(base: list[np.ndarray], repeat: int) -> None:
    """The steps of segments.encode_json(mask, "polygons", tolerance=1, skip=(11,)) timed one by one,
    ms per 480x360 frame (median of ``repeat``), each on the previous step's output. Always wall time:
    in a tight loop of short OpenCV calls a worker thread spins beside the main one here (not with
    OPENBLAS_NUM_THREADS=1), and the CPU clock counts both (about 2x for the findContours step)."""
    from stream.maskcodec import polygons, rle, segments

    global CLOCK
    CLOCK = time.perf_counter

    masks = [cv2.resize(m, (480, 360), interpolation=cv2.INTER_NEAREST) for m in base]

    def boxes(m: np.ndarray) -> tuple:
        ids, _, tboxes = rle.class_boxes(*rle.value_runs(m.T), m.shape[1])
        keep = [k for k, c in enumerate(ids.tolist()) if c != 11]
        return m, ids[keep].tolist(), tboxes[keep][:, [1, 0, 3, 2]].tolist()

    def trace(item: tuple) -> tuple:
        m, ids, bxs = item
        found, hier = [], []
        for c, (x, y, bw, bh) in zip(ids, bxs, strict=True):
            f, h = cv2.findContours(
                np.equal(m[y : y + bh, x : x + bw], c).view(np.uint8),
                cv2.RETR_CCOMP,
                cv2.CHAIN_APPROX_NONE,
                offset=(x, y),
            )
            if f:
                found.extend(f)
                hier.append(h[0])
        return found, np.concatenate(hier)[:, 3] != -1

    stages = [
        ("class areas and boxes (runs)", boxes, masks),
        ("compare + findContours per class", trace, None),
        ("chains -> pixel-edge rings", lambda t: polygons._rings(t[0], t[1], 0.0, False)[:2], None),
        ("simplify (rectangles + approxPolyDP)", lambda r: polygons._simplify(r[0], r[1], 1.0), None),
        ("ring text", lambda r: polygons._json_rings(r[0], r[1]), None),
    ]
    print(f"{'480x360 polygons tolerance 1, step':<42} {'ms':>6}")
    items = masks
    total = 0.0
    for name, fn, given in stages:
        items = given if given is not None else items
        ms = timed(fn, items, repeat)
        total += ms
        items = [fn(it) for it in items]
        print(f"{name:<42} {ms:6.3f}")
    print(f"{'sum of the steps':<42} {total:6.3f}")
    whole = timed(lambda m: segments.encode_json(m, "polygons", tolerance=1.0, skip=(11,)), masks, repeat)
    print(f"{'segments.encode_json, whole':<42} {whole:6.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="what a ms is (default wall)")
    ap.add_argument(
        "--no-stage-settings",
        dest="stage_settings",
        action="store_false",
        help="skip the stages' per-process settings (tune_process): a plain Python process",
    )
    ap.add_argument("--steps", action="store_true", help="polygons (tolerance 1) step by step, 480x360")
    args = ap.parse_args()
    if args.stage_settings:
        from stream.stages.base import tune_process

        tune_process()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    from stream.maskcodec import segments
    from stream.messages import decode_plane, decode_segments, encode_mask

    base = labels(args.frames)
    if args.steps:
        steps(base, args.repeat)
        return
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
