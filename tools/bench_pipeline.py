"""`segstream run` against the loop a user would write, timed as whole processes, side by side in one run.

    python tools/bench_pipeline.py [--clip stream/assets/sample.mp4 --clip OTHER.avi ...] [--repeat 5]

For each clip:

1. Work per frame, each step alone on one thread (CPU time): decode (PyAV), preprocess (resize +
   normalize), inference (ONNX Runtime, 1 thread), overlay (nearest resize + colorize + blend), encode
   (libx264 ultrafast). Their sum divided by the usable cores is the bound no program can beat on this
   machine ("2-core bound" on the development machine); the report says how close the pipeline gets.
2. Whole processes, wall clock from spawn to exit (start-up and shutdown included) and CPU (user+sys of
   the process and every child it waited for), in turn A B C A B C ...: A = ``segstream run CLIP`` at
   default flags, B = tools/naive_loop.py with the pipeline's encoder (PyAV libx264 ultrafast), C = the
   same loop with cv2 mp4v. Medians, min-max, and A/B, A/C (median of the per-round ratios: rounds are
   taken seconds apart, so a drift of the machine's speed cancels out).
3. One-frame run: ``segstream run CLIP --max-frames 1``, whole process.
   Time to first output frame: from spawn until the first frame has gone through every sink, observed
   from outside as the first file of an extra ``images:DIR?what=mask`` sink listed after the mp4 (sinks are
   written in order, so the encoder had the frame by then).
4. Live: a synthetic source of the clip's size paced at 2/3 of the pipeline's file throughput (frames /
   seconds from "go" in its own report), capture->output latency p50/p99 and drops, against the bare
   single-frame inference latency of the same runtime with the infer stage's live settings (batch 1,
   median). Criterion: p50 <= bare + 10 ms, p99 <= 2 x p50, 0 drops.

Targets (issue 11): A/B <= 0.8 on a 960x540 clip and <= 0.9 on 480x360, A/C <= 1, first frame <= 1 s, live
criterion. ``--pipeline-args "--workers 1 --threads 1"`` times another configuration instead of the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CLIP = REPO / "stream" / "assets" / "sample.mp4"
DEFAULT_MODEL = REPO / "stream" / "assets" / "default.onnx"
NAIVE = REPO / "tools" / "naive_loop.py"


# -- 1. work per frame, one step at a time --------------------------------------------------------------
def _no_spin(model: str) -> dict:
    from engines.runtime import backend_for

    return {"spin": False} if backend_for(model) == "onnxruntime" else {}


def _cpu() -> float:
    return time.thread_time()


def step_costs(model: str, clip: str, limit: int = 120) -> dict[str, float]:
    """CPU ms per frame of each step alone on one thread (library thread pools set to 1), done the way the
    pipeline's stages do them (stream.sources.file.to_bgr, stream.sinks.video.to_i420_frame, ...)."""
    import av
    import cv2

    from engines.runtime import load
    from engines.runtime.preprocess import prepare_batch, resize_to
    from stream.overlay import Overlay
    from stream.sinks.video import to_i420_frame
    from stream.sources.file import to_bgr

    cv2.setNumThreads(1)
    ms: dict[str, float] = {}
    with av.open(clip) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        t = _cpu()
        frames = []
        for f in c.decode(s):
            frames.append(to_bgr(f))
            if len(frames) >= limit:
                break
        ms["decode"] = 1000 * (_cpu() - t) / len(frames)
    rt = load(model, device="cpu", threads=1, **_no_spin(model))
    t = _cpu()
    blobs = [prepare_batch([f], rt.meta) for f in frames]
    ms["preprocess"] = 1000 * (_cpu() - t) / len(frames)
    rt.run(blobs[0])
    t = time.process_time()  # ORT runs on its own thread even with one intra-op thread
    masks = [rt.run(b)[0][0] for b in blobs]
    ms["infer"] = 1000 * (time.process_time() - t) / len(frames)
    rt.close()
    ov = Overlay(rt.meta.classes, opacity=0.5)
    t = _cpu()
    out = [ov.render(f, resize_to(m, f.shape[:2], nearest=True)) for f, m in zip(frames, masks, strict=True)]
    ms["overlay"] = 1000 * (_cpu() - t) / len(frames)
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as d, av.open(f"{d}/x.mp4", "w") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "23"})
        s.width, s.height, s.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        s.codec_context.thread_count = 1
        t = _cpu()
        for o in out:
            if o.shape[:2] != (s.height, s.width):
                o = cv2.copyMakeBorder(o, 0, s.height - h, 0, s.width - w, cv2.BORDER_REPLICATE)
            c.mux(s.encode(to_i420_frame(o)))
        c.mux(s.encode())
        ms["encode"] = 1000 * (_cpu() - t) / len(out)
    return ms


def bare_latency_ms(model: str, clip: str, threads: int | None, n: int = 60) -> float:
    """Median batch-1 ``Runtime.run`` latency (prepared input) with the given thread setting, no spinning
    (what the infer stage uses)."""
    from engines.runtime import load
    from stream.sources.base import ReadStatus
    from stream.uri import open_source

    src = open_source(clip)
    src.open()
    f = src.read(1.0)
    src.close()
    if f.status is not ReadStatus.OK:
        raise SystemExit(f"bench_pipeline: cannot read a frame of {clip}")
    rt = load(model, device="cpu", threads=threads, **_no_spin(model))
    x = rt.prepare([f.image])
    for _ in range(3):
        rt.run(x)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        rt.run(x)
        times.append(1000 * (time.perf_counter() - t))
    rt.close()
    return statistics.median(times)


# -- 2. whole processes -----------------------------------------------------------------------------------
def whole_process(cmd: list[str], watch: Path | None = None, timeout: float = 600) -> dict:
    """Run ``cmd``; wall from spawn to exit, CPU of it and its waited-for children, exit code, and, with
    ``watch``, seconds from spawn until the first file appears under that folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    first = None
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    if watch is not None:
        while p.poll() is None and first is None:
            if any(watch.rglob("*.png")):
                first = time.perf_counter() - t0
            else:
                time.sleep(0.003)
    out, err = p.communicate(timeout=timeout)
    wall = time.perf_counter() - t0
    # the child is reaped by communicate(); its rusage is in RUSAGE_CHILDREN, read as a difference
    return {"wall": wall, "rc": p.returncode, "out": out.decode(), "err": err.decode(), "first": first}


def timed(cmd: list[str], watch: Path | None = None) -> dict:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = whole_process(cmd, watch)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r["rc"] != 0:
        raise SystemExit(f"bench_pipeline: {shlex.join(cmd)} exited {r['rc']}:\n{r['err'][-2000:]}")
    return r


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(video=0) if p.size)


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s: dict[str, float], unit: str = "s", scale: float = 1.0) -> str:
    return f"{s['median'] * scale:7.2f} {unit} ({s['min'] * scale:.2f}-{s['max'] * scale:.2f})"


def segstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream", "run", *args]


# -- the bench --------------------------------------------------------------------------------------------
def bench_clip(args, clip: str, tmp: Path) -> dict:
    from stream import cpus
    from stream.uri import open_source

    src = open_source(clip)
    info = src.open()
    src.close()
    extra = shlex.split(args.pipeline_args)
    model = args.model
    cores = cpus.usable_cores()
    print(f"\n== {clip}: {info.width}x{info.height}, {info.total_frames} frames; {cores} usable cores")

    costs = step_costs(model, clip)
    per_frame = sum(costs.values())
    print(
        "work per frame, each step alone on 1 thread (CPU ms): "
        + ", ".join(f"{k} {v:.2f}" for k, v in costs.items())
        + f"; total {per_frame:.1f} ms"
    )

    pipe_out, naive_out, mp4v_out = tmp / "pipe.mp4", tmp / "naive.mp4", tmp / "naive-mp4v.mp4"
    cmds = {
        "pipeline": segstream(
            clip,
            "--model",
            model,
            "--sink",
            str(pipe_out),
            "--no-progress",
            "--stats-json",
            str(tmp / "pipe.json"),
            *extra,
        ),
        "naive x264": [sys.executable, str(NAIVE), model, clip, str(naive_out), "x264"],
        "naive mp4v": [sys.executable, str(NAIVE), model, clip, str(mp4v_out), "mp4v"],
    }
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    fps_file = []
    timed(cmds["naive x264"])  # warm the page cache and the interpreter's files; not counted
    for i in range(args.repeat):
        for name, cmd in cmds.items():
            r = timed(cmd)
            runs[name].append(r)
            if name == "pipeline":
                fps_file.append(json.loads((tmp / "pipe.json").read_text())["fps"])
        print(
            f"  round {i + 1}: "
            + ", ".join(f"{k} {v[-1]['wall']:.2f} s (cpu {v[-1]['cpu']:.2f} s)" for k, v in runs.items())
        )
    frames = {k: count_frames(p) for k, p in zip(cmds, (pipe_out, naive_out, mp4v_out), strict=True)}
    if len(set(frames.values())) != 1:
        raise SystemExit(f"bench_pipeline: outputs differ in frame count: {frames}")
    n = frames["pipeline"]
    wall = {k: stats([r["wall"] for r in v]) for k, v in runs.items()}
    cpu = {k: stats([r["cpu"] for r in v]) for k, v in runs.items()}
    ratio_x264 = statistics.median(
        a["wall"] / b["wall"] for a, b in zip(runs["pipeline"], runs["naive x264"], strict=True)
    )
    ratio_mp4v = statistics.median(
        a["wall"] / b["wall"] for a, b in zip(runs["pipeline"], runs["naive mp4v"], strict=True)
    )
    print(f"whole process, {n} frames each, median (min-max) of {args.repeat} alternating runs:")
    for k in cmds:
        print(f"  {k:<11} wall {fmt(wall[k])}   cpu {fmt(cpu[k])}")

    # 3. start-up: one frame, and the first frame out of a full-length run
    one_cmd = segstream(
        clip, "--model", model, "--max-frames", "1", "--sink", str(tmp / "one.mp4"), "--no-progress", *extra
    )
    one = [timed(one_cmd) for _ in range(args.repeat)]
    firsts = []
    for i in range(args.repeat):
        d = tmp / f"first{i}"
        r = timed(
            segstream(
                clip,
                "--model",
                model,
                "--max-frames",
                "30",
                "--sink",
                str(tmp / "first.mp4"),
                "--sink",
                f"images:{d}?what=mask",
                "--no-progress",
                *extra,
            ),
            watch=d,
        )
        firsts.append(r["first"] if r["first"] is not None else float("nan"))
    one_wall, first = stats([r["wall"] for r in one]), stats(firsts)
    one_cpu = stats([r["cpu"] for r in one])
    print(f"  one frame   wall {fmt(one_wall)}   cpu {fmt(one_cpu)}")
    print(f"  first output frame {fmt(first)} after spawn")

    # the bound, and where the pipeline's extra CPU goes
    bound = per_frame * n / 1000 / cores
    steady_cpu_ms = 1000 * (cpu["pipeline"]["median"] - one_cpu["median"]) / max(1, n - 1)
    fps = statistics.median(fps_file)
    print(
        f"  {cores}-core bound: {per_frame:.1f} ms x {n} frames / {cores} = {bound:.2f} s; pipeline wall "
        f"{wall['pipeline']['median']:.2f} s = {wall['pipeline']['median'] / bound:.2f}x the bound "
        f"(steady part {n / fps:.2f} s at {fps:.1f} fps = {n / fps / bound:.2f}x; start-up + shutdown ≈ "
        f"{one_wall['median']:.2f} s)"
    )
    print(
        f"  pipeline CPU per frame past start-up {steady_cpu_ms:.1f} ms vs the steps' {per_frame:.1f} ms: "
        f"hops, headers, copies and idle wake-ups ≈ {steady_cpu_ms - per_frame:+.1f} ms"
    )

    # 4. live
    live = None
    if not args.no_live:
        live_budget = cpus.budget(True)
        bare = bare_latency_ms(model, clip, live_budget.threads)
        pace = round(fps * 2 / 3, 1)
        nlive = max(60, int(pace * args.live_seconds))
        src = f"synthetic://?size={info.width}x{info.height}&fps={pace:g}&frames={nlive}"
        timed(
            segstream(
                src,
                "--model",
                model,
                "--live",
                "--sink",
                str(tmp / "live.mp4"),
                "--no-progress",
                "--stats-json",
                str(tmp / "live.json"),
                *extra,
            )
        )
        rep = json.loads((tmp / "live.json").read_text())
        lat, drops = rep["latency_ms"], sum(rep["drops"].values())
        ok = lat["p50"] <= bare + 10 and lat["p99"] <= 2 * lat["p50"] and drops == 0
        live = {"pace_fps": pace, "frames": nlive, "bare_ms": bare, "latency_ms": lat, "drops": rep["drops"]}
        print(
            f"  live {pace:g} fps (2/3 of {fps:.1f}), {nlive} frames: p50 {lat['p50']:.1f} ms, p99 "
            f"{lat['p99']:.1f} ms, drops {drops}; bare batch-1 inference ({live_budget.threads} threads) "
            f"{bare:.1f} ms -> {'holds' if ok else 'FAILS'} (p50 <= {bare + 10:.1f}, p99 <= "
            f"{2 * lat['p50']:.1f}, 0 drops)"
        )
        live["ok"] = ok

    target = 0.8 if info.width * info.height >= 960 * 540 else 0.9
    print(
        f"  pipeline / naive x264 = {ratio_x264:.2f}x (target <= {target}), pipeline / naive mp4v = "
        f"{ratio_mp4v:.2f}x (target <= 1), first frame {first['median']:.2f} s (target <= 1)"
    )
    return {
        "clip": clip,
        "size": [info.width, info.height],
        "frames": n,
        "cores": cores,
        "step_ms": costs,
        "bound_s": bound,
        "wall_s": wall,
        "cpu_s": cpu,
        "ratio_vs_naive_x264": ratio_x264,
        "ratio_vs_naive_mp4v": ratio_mp4v,
        "target_vs_naive_x264": target,
        "one_frame_s": one_wall,
        "first_frame_s": first,
        "pipeline_fps_from_go": fps,
        "live": live,
        "pipeline_args": extra,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--clip", action="append", default=None, help=f"repeatable (default {DEFAULT_CLIP.name})")
    ap.add_argument("--repeat", type=int, default=5, help="alternating rounds per clip")
    ap.add_argument("--pipeline-args", default="", help="extra `segstream run` options (default: none)")
    ap.add_argument("--no-live", action="store_true", help="skip the live run")
    ap.add_argument("--live-seconds", type=float, default=10.0, help="length of the live run")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    clips = args.clip or [str(DEFAULT_CLIP)]
    for c in clips + [args.model]:
        if not Path(c).is_file():
            print(f"bench_pipeline: error: {c} not found", file=sys.stderr)
            return 2
    args.model = str(Path(args.model).resolve())
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"model {args.model}; load average at start {load:.2f}")
    # an installed package has its bytecode (pip compiles it); a source tree under
    # PYTHONDONTWRITEBYTECODE=1 would compile ~60 modules in every process (0.1-0.3 s of each start-up)
    import compileall

    for pkg in ("stream", "engines"):
        compileall.compile_dir(str(REPO / pkg), quiet=1)
    results = []
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        for i, clip in enumerate(clips):
            d = Path(tmp) / str(i)
            d.mkdir()
            results.append(bench_clip(args, str(Path(clip).resolve()), d))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
