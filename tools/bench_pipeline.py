"""Bare inference vs a naive single-process loop vs the pipeline, side by side in one run.

    python tools/bench_pipeline.py --model m.onnx [--clip vtest.avi] [--frames 300] [--threads 1]

Same model, backend, clip and resolution for all three:

- bare:  runtime.predict on preloaded frames (the ceiling), with the infer stage's thread budget;
- naive: read -> infer -> colorize -> blend -> write mp4 in one loop, the way tutorials do it;
- pipeline: ``segstream run`` (file -> mp4), then a live run (synthetic source paced at --live-fps).

Targets (issue 6): pipeline >= 1.2x naive, >= 0.95x bare; live p50 <= 25 ms, p99 <= 50 ms, no drops.
Where a figure falls short the per-stage breakdown is printed (fps, busy %) to say why.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "vtest.avi"


def read_frames(clip: str, n: int):
    from stream.sources.base import ReadStatus
    from stream.uri import open_source

    src = open_source(clip)
    info = src.open()
    frames = []
    while len(frames) < n:
        f = src.read(1.0)
        if f.status is ReadStatus.EOS:
            break
        if f.status is ReadStatus.OK:
            frames.append(f.image)
    src.close()
    return frames, info


def bare(model: str, frames, threads: int | None, batch: int) -> dict:
    from engines.runtime import backend_for, load

    opts = {"spin": False} if backend_for(model) == "onnxruntime" else {}
    rt = load(model, threads=threads, **opts)
    rt.predict(frames[:2])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        rt.predict(frames[i : i + batch])
    dt = time.perf_counter() - t0
    rt.close()
    return {"fps": len(frames) / dt, "seconds": dt}


def naive(model: str, clip: str, n: int, threads: int | None, out: Path) -> dict:
    """The tutorial loop, timed per step."""
    from engines.runtime import backend_for, load
    from stream.overlay import Overlay
    from stream.sinks.base import Result, StreamInfo
    from stream.sources.base import ReadStatus
    from stream.uri import open_sink, open_source

    opts = {"spin": False} if backend_for(model) == "onnxruntime" else {}
    rt = load(model, threads=threads, **opts)
    src = open_source(clip)
    info = src.open()
    sink = open_sink(str(out))
    sink.open(StreamInfo("0", info.width, info.height, info.fps, rt.meta.classes, False, n))
    ov = Overlay(rt.meta.classes, opacity=0.5)
    steps = dict.fromkeys(("read", "infer", "overlay", "write"), 0.0)
    done = 0
    t0 = time.perf_counter()
    while done < n:
        t = time.perf_counter()
        f = src.read(1.0)
        steps["read"] += time.perf_counter() - t
        if f.status is ReadStatus.EOS:
            break
        if f.status is not ReadStatus.OK:
            continue
        t = time.perf_counter()
        mask = rt.predict([f.image], full_size=True).masks[0]
        steps["infer"] += time.perf_counter() - t
        t = time.perf_counter()
        blended = ov.render(f.image, mask)
        steps["overlay"] += time.perf_counter() - t
        t = time.perf_counter()
        sink.write(Result(seq=done, frame_index=f.index, frame=f.image, mask=mask, overlay=blended))
        steps["write"] += time.perf_counter() - t
        done += 1
    t = time.perf_counter()
    sink.close()
    steps["write"] += time.perf_counter() - t
    dt = time.perf_counter() - t0
    src.close()
    rt.close()
    return {"fps": done / dt, "seconds": dt, "share": {k: round(100 * v / dt, 1) for k, v in steps.items()}}


def pipeline(model: str, source: str, n: int, threads: int | None, out: Path, live: bool, **kw) -> dict:
    from stream.config import PipelineConfig
    from stream.pipeline import run_pipeline

    cfg = PipelineConfig(
        source=source,
        model=model,
        sinks=[str(out)],
        max_frames=n,
        threads=threads,
        live=live,
        progress=False,
        **kw,
    )
    outcome = run_pipeline(cfg)
    rep = outcome.report
    return {"fps": rep["fps"], "frames": outcome.frames, "report": rep, "ok": outcome.ok}


def breakdown(rep: dict) -> str:
    rows = []
    for name, s in rep["stages"].items():
        rows.append(
            f"    {name:<11} {s['fps']:7.1f} fps  busy {s['busy_pct']:5.1f} %  queue {s['queue_depth']}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clip", default=str(DEFAULT_CLIP))
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="inference threads (bare loop and infer stage)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--live-threads",
        type=int,
        default=None,
        help="inference threads for the live run (default: every core, as `segstream run` does for live "
        "sources: latency, not throughput, is what a paced source needs)",
    )
    ap.add_argument("--live-fps", type=float, default=30.0)
    ap.add_argument("--live-frames", type=int, default=300)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--json", default=None, help="write all figures here")
    args = ap.parse_args(argv)
    from engines.errors import SegstreamError

    try:
        return _main(args)
    except SegstreamError as e:
        print(f"bench_pipeline: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="segstream-bench-"))
    frames, info = read_frames(args.clip, args.frames)
    n = len(frames)
    print(
        f"clip {args.clip}: {info.width}x{info.height}, {n} frames; model {args.model}; "
        f"threads {args.threads}"
    )
    b = bare(args.model, frames, args.threads, args.batch)
    print(f"bare inference      {b['fps']:7.1f} fps")
    nv = naive(args.model, args.clip, n, args.threads, tmp / "naive.mp4")
    print(f"naive loop          {nv['fps']:7.1f} fps   time share %: {nv['share']}")
    p = pipeline(
        args.model,
        args.clip,
        n,
        args.threads,
        tmp / "pipe.mp4",
        False,
        batch=args.batch,
        workers=args.workers,
        slots=args.slots,
    )
    print(f"pipeline (file)     {p['fps']:7.1f} fps   {p['frames']} frames")
    w, h = info.width, info.height
    live_src = f"synthetic://?size={w}x{h}&fps={args.live_fps:g}&frames={args.live_frames}"
    lv = pipeline(
        args.model,
        live_src,
        args.live_frames,
        args.live_threads,
        tmp / "live.mp4",
        True,
        batch=args.batch,
        workers=args.workers,
        slots=4,
    )
    lat = lv["report"]["latency_ms"]
    drops = sum(lv["report"]["drops"].values())
    print(
        f"pipeline (live {args.live_fps:g} fps, threads {args.live_threads or 'all'}) "
        f"{lv['fps']:5.1f} fps   latency p50 {lat['p50']:.1f} ms  "
        f"p95 {lat['p95']:.1f} ms  p99 {lat['p99']:.1f} ms  drops {drops}"
    )
    r_naive = p["fps"] / nv["fps"]
    r_bare = p["fps"] / b["fps"]
    print("\nratios (target):")
    print(f"  pipeline / naive = {r_naive:.2f}x  (>= 1.2)   [{p['fps']:.1f} / {nv['fps']:.1f} fps]")
    print(f"  pipeline / bare  = {r_bare:.2f}x  (>= 0.95)  [{p['fps']:.1f} / {b['fps']:.1f} fps]")
    print(f"  live p50 {lat['p50']:.1f} ms (<= 25), p99 {lat['p99']:.1f} ms (<= 50), drops {drops} (0)")
    if r_naive < 1.2 or r_bare < 0.95:
        print("\nfile run short of target; per-stage breakdown:\n" + breakdown(p["report"]))
    if lat["p50"] > 25 or lat["p99"] > 50 or drops:
        print("\nlive run short of target; per-stage breakdown:\n" + breakdown(lv["report"]))
        print(f"  drops by cause: {lv['report']['drops']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "bare": b,
                    "naive": nv,
                    "pipeline": p,
                    "live": lv,
                    "ratios": {"naive": r_naive, "bare": r_bare},
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
