"""What does publishing masks cost? Three measurements, 480x360 and 1280x720 masks.

micro     no pipeline: a loop paced at 30 fps does overlay-stage work per frame (colorize + blend)
          and ZmqPubSink.write(); the publisher's CPU per frame (all threads, ZeroMQ I/O included)
          without publishing, and publishing to 0 and to 4 real subscriber processes, per encoding
          (CamVid label masks). The loop runs with the per-process settings every stage applies
          before its first frame (stream.stages.base.tune_process); --no-stage-settings measures a
          plain Python process instead.
pipeline  the way a user compares: whole `segstream run CLIP` processes, default flags, start-up
          counted, on a clip long enough to be a run (the shared vtest / solidWhiteRight videos looped
          to --frames, scaled to each size). "none" publishes nothing a subscriber could use
          (encoding=raw, no subscriber: a header and a send ZeroMQ drops); "publishing" is
          encoding=ENCODING with 4 subscribers. Interleaved, --repeat times; medians of the run's fps,
          of start-up (the wall time of a 5-frame run) and of what each frame costs after it: frames
          per second and CPU ms per frame (all the run's processes; the subscribers not counted) from
          (whole run - 5-frame run) / the frames between. Subscribers: `light` (a plain ZeroMQ SUB
          that counts messages) or `decoding` (stream.subscriber, decoding every mask). Both run on
          this host and report their own CPU per frame: on 2 cores they compete with the pipeline.
          --workers 1 --threads 1 gives inference one core of its own and leaves the other to the rest
          (the regime of a GPU pipeline, where inference does not run on the publisher's cores);
          --device cuda with a .pt model measures a GPU pipeline.
transport ZeroMQ's fan-out alone: a paced PUB sends a raw mask's and a polygons document's worth of
          bytes to 0 and to 4 light subscribers, over tcp and ipc; the publisher's CPU per message.

  python tools/bench_publish.py micro [--frames 300] [--encodings raw coco-rle polygons]
                                      [--no-stage-settings]
  python tools/bench_publish.py pipeline [--encodings polygons coco-rle] [--frames 1600] [--repeat 3]
                                         [--subscribers light|decoding] [--model M.onnx]
                                         [--workers N] [--threads N] [--device cuda]
                                         [--sizes 480x360 1280x720]
  python tools/bench_publish.py transport [--frames 1600] [--rate 185]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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

# Both report the CPU they spent from their first message on (all threads, ZeroMQ's I/O included):
# on one host the subscribers' CPU is taken from the pipeline's cores.
SUBSCRIBER = """
import json, resource, sys
from stream.subscriber import Subscriber
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
with Subscriber(sys.argv[1]) as sub:
    print("ready", flush=True)
    n, c0 = 0, 0.0
    while sub.recv(timeout=float(sys.argv[2]) if n == 0 else 2.0) is not None:  # 2 s idle: the run ended
        c0 = cpu() if n == 0 else c0
        n += 1
    print(json.dumps({"received": n, "gaps": sub.stats.gaps, "cpu_s": cpu() - c0}), flush=True)
"""


LIGHT_SUBSCRIBER = """
import json, resource, sys, zmq
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1].split("?")[0])
print("ready", flush=True)
n, c0 = 0, 0.0
while sub.poll(int(1000 * float(sys.argv[2])) if n == 0 else 2000):
    sub.recv_multipart()
    c0 = cpu() if n == 0 else c0
    n += 1
print(json.dumps({"received": n, "gaps": 0, "cpu_s": cpu() - c0}), flush=True)
"""


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            return port


def start_subscribers(
    endpoint: str, n: int, idle_timeout: float, code: str = SUBSCRIBER
) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, endpoint, str(idle_timeout)],
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


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


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
    settings = "stage process settings" if args.stage_settings else "no stage process settings"
    table = Table(
        title=f"publish microbench: {args.frames} frames paced at {args.rate:g} fps ({settings}); "
        "publisher CPU ms per frame (all threads); extra = over the same loop without publishing "
        "(what it costs the pipeline: `pipeline` mode)"
    )
    cols = ("mask", "encoding", "bytes", "write ms", "CPU ms: none", "0 subs", "4 subs", "extra 0 subs",
            "extra 4 subs", "received/sub", "gaps/sub")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for size in SIZES:
        base, _, _ = micro_run(size, None, 0, args.frames, args.rate)
        for enc in args.encodings:
            cpu0, w0, _ = micro_run(size, enc, 0, args.frames, args.rate)
            cpu4, w4, reps = micro_run(size, enc, 4, args.frames, args.rate)
            nbytes = len(bytes(encode_mask(samples(size)[2][0], enc)))
            table.add_row(
                f"{size[0]}x{size[1]}", enc, f"{nbytes:,}", f"{w4:.2f}", f"{base:.2f}", f"{cpu0:.2f}",
                f"{cpu4:.2f}", f"{cpu0 - base:.2f}", f"{cpu4 - base:.2f}", *_sub_cols(reps),
            )  # fmt: skip
    console.print(table)


def make_clip(size, n_frames: int, tmp: Path) -> Path:
    """A clip of the requested size from the shared videos, looped and scaled (no download). Without
    them (a machine with the repo alone) the bundled sample clip; without ffmpeg, OpenCV writes it."""
    src = SHARED / "video" / ("vtest.avi" if size == (480, 360) else "solidWhiteRight.mp4")
    if not src.exists():
        src = REPO / "stream" / "assets" / "sample.mp4"
    out = tmp / f"clip_{size[0]}x{size[1]}.mp4"
    if shutil.which("ffmpeg"):
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-frames:v",
             str(n_frames), "-vf", f"scale={size[0]}:{size[1]}", "-c:v", "libx264", "-preset", "ultrafast",
             str(out)],
            check=True,
        )  # fmt: skip
        return out
    cap = cv2.VideoCapture(str(src))
    frames = []
    while (got := cap.read())[0]:
        frames.append(cv2.resize(got[1], size))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for i in range(n_frames):
        writer.write(frames[i % len(frames)])
    writer.release()
    return out


def pipeline_run(
    clip: Path,
    encoding: str,
    n_subs: int,
    light: bool,
    run_args: list[str],
    max_frames: int | None = None,
) -> tuple[float, float, float, int, list[dict]]:
    """One `segstream run CLIP RUN_ARGS --sink zmq-pub://...?encoding=ENCODING` with n_subs subscribers:
    (fps, CPU seconds of the run's process tree, wall seconds, frames, subscriber reports)."""
    port, classes_port = free_port(), free_port()
    code = LIGHT_SUBSCRIBER if light else SUBSCRIBER
    subs = start_subscribers(f"tcp://127.0.0.1:{port}?classes={classes_port}", n_subs, 30.0, code)
    stats = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [
        sys.executable,
        "-m",
        "stream",
        "run",
        str(clip),
        *run_args,
        "--no-progress",
        "--sink",
        f"zmq-pub://127.0.0.1:{port}?lossless=off&classes={classes_port}&encoding={encoding}",
        "--stats-json",
        str(stats),
        *(["--max-frames", str(max_frames)] if max_frames else []),
    ]
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=REPO)
    elapsed, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    # the run and its stage processes are reaped here; the subscribers are not yet, so they do not count
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"segstream run failed: {proc.stderr[-2000:]}")
    doc = json.loads(stats.read_text())
    stats.unlink()
    return float(doc["fps"]), cpu, elapsed, int(doc["frames"]), finish_subscribers(subs)


def run_pipeline(args) -> None:
    console = Console(width=220)
    light = args.subscribers == "light"
    run_args = ["--model", args.model, *(["--workers", str(args.workers)] if args.workers else [])]
    run_args += ["--threads", str(args.threads)] if args.threads else []
    run_args += ["--device", args.device] if args.device else []
    flags = " ".join(run_args[2:]) or "default flags"
    table = Table(
        title=f"segstream run ({flags}), {args.frames}-frame clips, medians of {args.repeat} interleaved "
        f"runs: publishing nothing (encoding=raw, no subscriber) vs ENCODING to 4 {args.subscribers} "
        "subscribers on this host; after start-up = (a whole run - a 5-frame run) / the frames between; "
        "CPU: the run's processes; subscribers: their own CPU per frame, all 4"
    )
    cols = (
        "clip", "encoding", "fps none", "publishing", "ratio", "after start-up: fps none", "publishing",
        "ratio", "CPU ms/frame none", "publishing", "ratio", "subscribers ms/frame", "start-up s none",
        "publishing", "received/sub",
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            clip = make_clip(size, args.frames, Path(tmp))
            for enc in args.encodings:
                runs: dict[str, list[tuple[float, ...]]] = {"none": [], "pub": []}
                reps: list[dict] = []
                sub_ms: list[float] = []
                for _ in range(args.repeat):  # interleaved: machine load drifts hit both sides alike
                    for side, encoding, n in (("none", "raw", 0), ("pub", enc, 4)):
                        fps, cpu, wall, frames, got = pipeline_run(clip, encoding, n, light, run_args)
                        _, cpu5, wall5, frames5, _ = pipeline_run(clip, encoding, 0, light, run_args, 5)
                        more = frames - frames5
                        steady = more / (wall - wall5)
                        runs[side].append((fps, steady, 1000 * (cpu - cpu5) / more, wall5))
                        if got:
                            reps = got
                            sub_ms.append(1000 * sum(r["cpu_s"] for r in got) / frames)
                med = {k: np.median(np.array(v), axis=0) for k, v in runs.items()}
                what = "fps, fps after start-up, CPU ms/frame after it, start-up s"
                console.print(f"  {size} {enc} ({what}): {runs}; subscribers ms/frame {sub_ms}", style="dim")
                (f0, s0, c0, w0), (f1, s1, c1, w1) = med["none"], med["pub"]
                table.add_row(
                    f"{size[0]}x{size[1]}", enc, f"{f0:.1f}", f"{f1:.1f}", f"{f1 / f0:.3f}", f"{s0:.1f}",
                    f"{s1:.1f}", f"{s1 / s0:.3f}", f"{c0:.2f}", f"{c1:.2f}", f"{c0 / c1:.3f}",
                    f"{np.median(sub_ms):.2f}", f"{w0:.2f}", f"{w1:.2f}", _sub_cols(reps)[0],
                )  # fmt: skip
    console.print(table)


def run_transport(args) -> None:
    """ZeroMQ's fan-out alone: a PUB paced at --rate sends --frames messages of each size (a header and
    the payload) to 0 and to 4 light subscriber processes, over tcp and ipc; the publisher's CPU per
    message (all threads: its I/O thread does the sends)."""
    import zmq

    console = Console(width=150)
    table = Table(
        title=f"fan-out alone: {args.frames} messages at {args.rate:g}/s, publisher CPU ms per message"
    )
    for col in ("payload bytes", "transport", "0 subs", "4 subs", "extra for 4", "received/sub"):
        table.add_column(col, justify="right")
    folder = Path(tempfile.mkdtemp())
    for size in (172_800, 17_000):  # a raw 480x360 mask; a polygons document of one
        for transport in ("tcp", "ipc"):
            cpus, got = [], []
            for n_subs in (0, 4):
                ctx = zmq.Context()
                pub = ctx.socket(zmq.PUB)
                pub.setsockopt(zmq.SNDHWM, 64)
                if transport == "tcp":
                    pub.bind("tcp://127.0.0.1:0")
                else:
                    pub.bind(f"ipc://{folder / 'pub.sock'}")
                addr = pub.getsockopt_string(zmq.LAST_ENDPOINT)
                subs = start_subscribers(addr, n_subs, 5.0, LIGHT_SUBSCRIBER)
                time.sleep(0.5)  # every subscription arrived
                payload, header = os.urandom(size), b"h" * 300
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(args.frames):
                    pub.send_multipart([header, payload], copy=False)
                    pause = t0 + (i + 1) / args.rate - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                time.sleep(0.3)  # the I/O thread sends what is queued
                cpus.append(1000 * (time.process_time() - c0) / args.frames)
                got = finish_subscribers(subs) or got
                pub.close(0)
                ctx.term()
            table.add_row(
                f"{size:,}", transport, f"{cpus[0]:.3f}", f"{cpus[1]:.3f}", f"{cpus[1] - cpus[0]:.3f}",
                _sub_cols(got)[0],
            )  # fmt: skip
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--frames", type=int, default=300)
    m.add_argument("--rate", type=float, default=30.0, help="frames per second the loop is paced at")
    encodings = ["raw", "rle", "png", "coco-rle", "polygons"]
    m.add_argument("--encodings", nargs="+", default=["raw", "rle", "png"], choices=encodings)
    m.add_argument(
        "--no-stage-settings",
        dest="stage_settings",
        action="store_false",
        help="skip the overlay stage's per-process settings (tune_process): a plain Python process",
    )
    p = sub.add_parser("pipeline")
    p.add_argument("--model", default=str(REPO / "stream" / "assets" / "default.onnx"))
    p.add_argument("--frames", type=int, default=1600)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--encodings", nargs="+", default=["polygons", "coco-rle"], choices=encodings)
    p.add_argument("--subscribers", choices=["light", "decoding"], default="light")
    p.add_argument("--workers", type=int, help="segstream run --workers (default: its own default)")
    p.add_argument("--threads", type=int, help="segstream run --threads (inference threads per worker)")
    p.add_argument("--device", help="segstream run --device (e.g. cuda with a .pt model)")
    p.add_argument("--sizes", nargs="+", type=_size, default=SIZES, help="WxH clips (default both)")
    t = sub.add_parser("transport")
    t.add_argument("--frames", type=int, default=1600)
    t.add_argument("--rate", type=float, default=185.0, help="messages per second (the pipeline's fps)")
    args = ap.parse_args()
    {"micro": run_micro, "pipeline": run_pipeline, "transport": run_transport}[args.mode](args)


if __name__ == "__main__":
    main()
