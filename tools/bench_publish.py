"""What does publishing masks cost? Two measurements, 480x360 and 1280x720 masks, 0 vs 4 subscribers.

  micro     no pipeline: a loop paced at 30 fps does overlay-stage work per frame (colorize + blend)
            and ZmqPubSink.write(); the publisher's CPU per frame (all threads, ZeroMQ I/O included)
            without publishing, and publishing to 0 and to 4 real subscriber processes, per encoding.
            The loop runs with the per-process settings every stage applies before its first frame
            (stream.stages.base.tune_process: freed memory kept for reuse, OpenCV's thread count);
            --no-stage-settings measures a plain Python process instead.
  pipeline  `segstream run CLIP --sink zmq-pub://...` fps with 0 and 4 subscribers (needs --model), and
            the CPU seconds of the whole run (all stage processes): on a busy machine fps is noisy, the
            CPU ratio is what a CPU-bound pipeline's fps ratio would be.

    python tools/bench_publish.py micro [--frames 300] [--encodings raw coco-rle polygons]
                                        [--no-stage-settings]
    python tools/bench_publish.py pipeline --model model.onnx [--frames 200] [--encoding polygons]

Subscribers run on the same host here, so their CPU competes with the pipeline: a pessimistic figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
SIZES = [(480, 360), (1280, 720)]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

SUBSCRIBER = """
import json, sys
from stream.subscriber import Subscriber
with Subscriber(sys.argv[1]) as sub:
    print("ready", flush=True)
    n = 0
    while sub.recv(timeout=float(sys.argv[2])) is not None:
        n += 1
    print(json.dumps({"received": n, "gaps": sub.stats.gaps}), flush=True)
"""


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            return port


def start_subscribers(endpoint: str, n: int, idle_timeout: float) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, endpoint, str(idle_timeout)],
            env=ENV,
            text=True,
            stdout=subprocess.PIPE,
        )
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    return procs


def finish_subscribers(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=120)
        out.append(json.loads(text.strip().splitlines()[-1]))
    return out


def encode_mask(mask, encoding):
    from stream.messages import encode_mask as enc

    return enc(mask, encoding)


def samples(size: tuple[int, int]):
    from engines.meta import ClassTable

    camvid = SHARED / "camvid"
    labels = sorted((camvid / "val" / "labels").glob("*.png"))[:8]
    masks = [
        cv2.resize(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), size, interpolation=cv2.INTER_NEAREST)
        for p in labels
    ]
    images = [camvid / "val" / "images" / (p.stem + ".jpg") for p in labels]
    frames = [cv2.resize(cv2.imread(str(p)), size) for p in images]
    return ClassTable.from_json_file(camvid / "classes.json"), frames, masks


def micro_run(
    size, encoding: str | None, n_subs: int, n_frames: int, rate: float
) -> tuple[float, float, list]:
    """Paced at ``rate`` fps: (publisher CPU ms per frame, all threads incl. ZeroMQ I/O; mean write() ms;
    subscriber reports). ``encoding=None``: the same loop without publishing (the baseline)."""
    from stream.sinks.base import Result, StreamInfo
    from stream.sinks.zmq_pub import ZmqPubSink

    classes, frames, masks = samples(size)
    lut = classes.lut_bgr()
    port = free_port()
    classes_port = free_port()
    sink = None
    if encoding is not None:
        sink = ZmqPubSink(
            f"zmq-pub://127.0.0.1:{port}?encoding={encoding}&lossless=off&classes={classes_port}"
        )
        sink.open(StreamInfo("bench", size[0], size[1], rate, classes, live=False))
    subs = start_subscribers(f"tcp://127.0.0.1:{port}?classes={classes_port}", n_subs, idle_timeout=2.0)
    time.sleep(0.5)
    write_s = 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n_frames):
        k = i % len(frames)
        # the overlay stage's own work per frame
        color = cv2.LUT(cv2.cvtColor(masks[k], cv2.COLOR_GRAY2BGR), lut)
        overlay = cv2.addWeighted(frames[k], 0.5, color, 0.5, 0)
        if sink is not None:
            r = Result(
                seq=i,
                frame_index=i,
                frame=frames[k],
                mask=masks[k],
                overlay=overlay,
                timestamps={"capture": time.time()},
            )
            w0 = time.perf_counter()
            sink.write(r)
            write_s += time.perf_counter() - w0
        pause = t0 + (i + 1) / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    time.sleep(0.2)  # let the I/O threads finish sending what is queued
    cpu = time.process_time() - cpu0
    if sink is not None:
        sink.close()
    return 1000 * cpu / n_frames, 1000 * write_s / n_frames, finish_subscribers(subs)


def _sub_cols(reports: list[dict]) -> list[str]:
    return [
        f"{np.mean([r['received'] for r in reports]):.0f}",
        f"{np.mean([r['gaps'] for r in reports]):.0f}",
    ]


def run_micro(args) -> None:
    if args.stage_settings:  # cv2 is imported above: tune_process sets its threads only when loaded
        from stream.stages.base import tune_process

        tune_process()  # the publisher runs inside the overlay stage, which applies these
    console = Console(width=170)
    budget = 2 * 1000.0 / args.pipeline_fps  # CPU ms per frame of a 2-core pipeline at that rate
    settings = "stage process settings" if args.stage_settings else "no stage process settings"
    table = Table(
        title=f"publish microbench: {args.frames} frames paced at {args.rate:g} fps ({settings}); "
        f"publisher CPU ms per frame (all threads); cost = extra CPU / CPU budget of a "
        f"{args.pipeline_fps:g} fps 2-core pipeline"
    )
    for col in (
        "mask",
        "encoding",
        "bytes",
        "write ms",
        "CPU ms: none",
        "0 subs",
        "4 subs",
        "cost 0 subs",
        "cost 4 subs",
        "received/sub",
        "gaps/sub",
    ):
        table.add_column(col, justify="right")
    for size in SIZES:
        base, _, _ = micro_run(size, None, 0, args.frames, args.rate)
        for enc in args.encodings:
            cpu0, w0, _ = micro_run(size, enc, 0, args.frames, args.rate)
            cpu4, w4, reps = micro_run(size, enc, 4, args.frames, args.rate)
            nbytes = len(bytes(encode_mask(samples(size)[2][0], enc)))
            table.add_row(
                f"{size[0]}x{size[1]}",
                enc,
                f"{nbytes:,}",
                f"{w4:.2f}",
                f"{base:.2f}",
                f"{cpu0:.2f}",
                f"{cpu4:.2f}",
                f"{100 * (cpu0 - base) / budget:.1f}%",
                f"{100 * (cpu4 - base) / budget:.1f}%",
                *_sub_cols(reps),
            )
    console.print(table)


def make_clip(size, n_frames: int, tmp: Path) -> Path:
    """A clip of the requested size from the shared videos (ffmpeg scale; no download)."""
    src = SHARED / "video" / ("vtest.avi" if size == (480, 360) else "solidWhiteRight.mp4")
    out = tmp / f"clip_{size[0]}x{size[1]}.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-frames:v",
            str(n_frames),
            "-vf",
            f"scale={size[0]}:{size[1]}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            str(out),
        ],
        check=True,
    )
    return out


def pipeline_fps(
    clip: Path, model: str, n_subs: int, extra: list[str], encoding: str = "raw"
) -> tuple[float, float, list[dict]]:
    """(fps, CPU seconds of the whole `segstream run` process tree, subscriber reports)."""
    port, classes_port = free_port(), free_port()
    subs = start_subscribers(f"tcp://127.0.0.1:{port}?classes={classes_port}", n_subs, idle_timeout=10.0)
    stats = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [
        sys.executable,
        "-m",
        "stream",
        "run",
        str(clip),
        "--model",
        model,
        "--no-progress",
        "--sink",
        f"zmq-pub://127.0.0.1:{port}?lossless=off&classes={classes_port}&encoding={encoding}",
        "--stats-json",
        str(stats),
        *extra,
    ]
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=REPO)
    elapsed, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    # the run and its stage processes are reaped here; the subscribers are not yet, so they do not count
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"segstream run failed: {proc.stderr[-2000:]}")
    fps = None
    try:
        doc = json.loads(stats.read_text())
        fps = _find_fps(doc)
    except (OSError, json.JSONDecodeError):
        pass
    counts = re.findall(r"(\d+) frames", proc.stderr)
    if fps is None:
        fps = (int(counts[-1]) if counts else 0) / elapsed
    return fps, cpu, finish_subscribers(subs)


def _find_fps(doc) -> float | None:
    """The pipeline's output fps from --stats-json (its exact layout belongs to the pipeline)."""
    if isinstance(doc, dict):
        for key in ("fps", "output_fps", "fps_out"):
            if isinstance(doc.get(key), (int, float)):
                return float(doc[key])
        for key in ("overlay", "pipeline", "summary"):
            if key in doc:
                got = _find_fps(doc[key])
                if got is not None:
                    return got
    return None


def run_pipeline(args) -> None:
    console = Console(width=170)
    table = Table(
        title=f"pipeline fps (segstream run, {args.frames} frames, median of {args.repeat}, "
        f"encoding={args.encoding}), 0 vs 4 subscribers"
    )
    cols = ("clip", "fps 0 subs", "fps 4 subs", "ratio", "CPU s 0 subs", "CPU s 4 subs", "CPU ratio 0/4")
    for col in (*cols, "received/sub", "gaps/sub"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            clip = make_clip(size, args.frames, Path(tmp))
            runs0, runs4, cpus0, cpus4 = [], [], [], []
            for _ in range(args.repeat):  # interleaved, so machine load drifts hit both sides alike
                fps, cpu, _ = pipeline_fps(clip, args.model, 0, args.run_args, args.encoding)
                runs0.append(fps)
                cpus0.append(cpu)
                fps, cpu, reps = pipeline_fps(clip, args.model, 4, args.run_args, args.encoding)
                runs4.append(fps)
                cpus4.append(cpu)
            fps0, fps4 = float(np.median(runs0)), float(np.median(runs4))
            cpu0, cpu4 = float(np.median(cpus0)), float(np.median(cpus4))
            console.print(f"  {size}: fps 0 subs {runs0}, 4 subs {runs4}", style="dim")
            table.add_row(
                f"{size[0]}x{size[1]}", f"{fps0:.1f}", f"{fps4:.1f}", f"{fps4 / fps0:.3f}",
                f"{cpu0:.2f}", f"{cpu4:.2f}", f"{cpu0 / cpu4:.3f}", *_sub_cols(reps),
            )  # fmt: skip
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--frames", type=int, default=300)
    m.add_argument("--rate", type=float, default=30.0, help="frames per second the loop is paced at")
    m.add_argument(
        "--pipeline-fps",
        type=float,
        default=55.0,
        help="pipeline rate the cost is expressed against (FACTS.md: ~55 fps on 2 cores)",
    )
    encodings = ["raw", "rle", "png", "coco-rle", "polygons"]
    m.add_argument("--encodings", nargs="+", default=["raw", "rle", "png"], choices=encodings)
    m.add_argument(
        "--no-stage-settings",
        dest="stage_settings",
        action="store_false",
        help="skip the overlay stage's per-process settings (tune_process): a plain Python process",
    )
    p = sub.add_parser("pipeline")
    p.add_argument("--model", required=True)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--encoding", default="raw", choices=encodings, help="the publisher's mask encoding")
    p.add_argument("run_args", nargs="*", help="extra `segstream run` arguments (after --)")
    args = ap.parse_args()
    run_micro(args) if args.mode == "micro" else run_pipeline(args)


if __name__ == "__main__":
    main()
