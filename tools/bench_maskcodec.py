"""Encode/decode cost of the coco-rle and polygons mask encodings, ms per frame (median), at 480x360 and
1920x1080, beside raw/rle/png and pycocotools' own encoder: on real CamVid labels resized (nearest), or
(--masks model) on what the bundled model outputs for the vtest clip at each size, which has ~3x the
regions of a hand-drawn label.

    python tools/bench_maskcodec.py [--frames 8] [--repeat 5] [--clock wall|cpu] [--masks labels|model]
                                    [--no-stage-settings]
    python tools/bench_maskcodec.py --steps [--masks model]   # where a polygons encode's time goes

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


def steps(masks: list[np.ndarray], repeat: int) -> None:
    """The kernels of segments.encode_json(mask, "polygons", tolerance=1, skip=(11,)) timed one by one,
    ms per frame (median of ``repeat``; wall time, one thread), each on the masks given."""
    from stream.maskcodec import crack, segments

    global CLOCK
    CLOCK = time.perf_counter
    h, w = masks[0].shape
    wanted = np.ones(256, np.bool_)
    wanted[11] = False
    segments.warm("polygons")
    for m in masks:  # the scratch buffers grown to these frames
        crack.trace(m, 1.0, (11,))
    scratch = crack._scratch(h, w)

    def runs(m: np.ndarray) -> int:
        count = np.zeros(256, np.int64)
        box = np.empty((256, 4), np.int64)
        box[:, :2] = (w, h)
        box[:, 2:] = -1
        return crack._runs(m, scratch.starts, count, box)

    def runs_trace(m: np.ndarray) -> tuple:
        s, n = scratch, runs(m)
        args = (s.starts, n, s.marks, s.base, s.vx, s.vy, s.first, s.cls, s.parent, s.area)
        nv, nr = crack._trace(m, wanted, *args)
        s.restamp(nr)
        return s.vx[:nv].copy(), s.vy[:nv].copy(), s.first[: nr + 1].copy(), nr

    def simplify(item: tuple) -> int:
        vx, vy, first, nr = item
        out = np.empty(len(vx), np.int32), np.empty(len(vx), np.int32)
        tables = np.empty(nr + 1, np.int64), np.empty((nr, 4), np.int64), np.empty((len(vx) + 2, 2), np.int64)
        return crack._finish(vx, vy, first, nr, 1.0, *out, *tables)

    print(f"{f'{w}x{h} polygons tolerance 1, kernel':<42} {'ms':>6}")
    traced = [runs_trace(m) for m in masks]
    docs = [crack.trace(m, 1.0, (11,)) for m in masks]
    t_runs = timed(runs, masks, repeat)
    t_trace = timed(runs_trace, masks, repeat) - t_runs
    t_dp = timed(simplify, traced, repeat)
    t_text = timed(lambda t: t.segments_json(False, (11,)), docs, repeat)
    total = 0.0
    for name, ms in (
        ("row runs, class areas and boxes", t_runs),
        ("trace every ring of every class", t_trace),
        ("simplify (Douglas-Peucker)", t_dp),
        ("document text", t_text),
    ):
        total += ms
        print(f"{name:<42} {ms:6.3f}")
    print(f"{'sum of the steps':<42} {total:6.3f}")
    whole = timed(lambda m: segments.encode_json(m, "polygons", tolerance=1.0, skip=(11,)), masks, repeat)
    print(f"{'segments.encode_json, whole':<42} {whole:6.3f}")


def model_masks(size: tuple[int, int], n: int) -> list[np.ndarray]:
    """n masks the bundled model gives at ``size``: `segstream run` on the shared vtest clip (looped,
    scaled with ffmpeg) publishing raw masks to a subscriber here. Model output has more, smaller
    regions than hand-drawn labels: ~3x the rings of a CamVid label at 480x360. (A lossy subscriber:
    the clip has 2n frames, the first n received are kept.)"""
    import subprocess
    import tempfile

    from stream.subscriber import Subscriber

    clip = Path(tempfile.mkdtemp()) / "clip.mp4"
    src = REPO.parent / "shared" / "data" / "video" / "vtest.avi"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-frames:v", str(2 * n),
         "-vf", f"scale={size[0]}:{size[1]}", "-c:v", "libx264", "-preset", "ultrafast", str(clip)],
        check=True,
    )  # fmt: skip
    port = 47000 + (size[0] % 900)
    with Subscriber(f"tcp://127.0.0.1:{port}?classes={port + 1}") as sub:
        run = subprocess.Popen(
            [sys.executable, "-m", "stream", "run", str(clip), "--no-progress", "--no-live", "--sink",
             f"zmq-pub://127.0.0.1:{port}?lossless=off&classes={port + 1}"],
            cwd=REPO, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        masks = []
        while (msg := sub.recv(timeout=20)) is not None and len(masks) < n:
            masks.append(np.array(msg.mask))
        run.wait()
    print(f"masks: {len(masks)} of the bundled model at {size[0]}x{size[1]} (vtest)")
    return masks


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
    ap.add_argument("--steps", action="store_true", help="polygons (tolerance 1) kernel by kernel, 480x360")
    ap.add_argument(
        "--masks",
        choices=["labels", "model"],
        default="labels",
        help="CamVid labels (default) or the bundled model's output on the vtest clip",
    )
    args = ap.parse_args()
    if args.stage_settings:
        from stream.stages.base import tune_process

        tune_process()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    from stream.maskcodec import segments
    from stream.messages import decode_plane, decode_segments, encode_mask

    def frames_at(w: int, h: int) -> list[np.ndarray]:
        if args.masks == "model":
            return model_masks((w, h), args.frames)
        return [cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in base]

    base = labels(args.frames) if args.masks == "labels" else []
    if args.steps:
        steps(frames_at(480, 360), args.repeat)
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
        masks = frames_at(w, h)
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
