"""`segstream subscribe ENDPOINT`: receive published masks; print stats, save them, or re-encode a video."""

from __future__ import annotations

import argparse

HELP = "receive a published mask stream: per-message stats, save masks/overlays, or write a video"
DESCRIPTION = (
    "Connect to a mask stream published with --sink zmq-pub://HOST:PORT. By default the lossy endpoint "
    "(PORT: a slow subscriber misses masks and counts the gaps); --lossless uses the recorder endpoint "
    "(PORT+2, opened by a publisher with ?lossless=on: the publisher waits for this subscriber, nothing is "
    "missed). Malformed messages (docs/PROTOCOL.md section 11 lists the limits) are skipped and counted."
)
WAIT_NOTICE_S = 3.0  # say what it is waiting for when nothing arrived for this long


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "endpoint", help="tcp://HOST:PORT (or the publisher's zmq-pub://HOST:PORT?classes=..&lossless=..)"
    )
    p.add_argument("--lossless", action="store_true", help="use the recorder endpoint: backpressure, no gaps")
    p.add_argument("--count", type=int, default=None, metavar="N", help="stop after N masks")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop when no mask arrives for S seconds (default: wait until the stream ends)",
    )
    p.add_argument(
        "--save",
        metavar="DIR",
        help="write each mask as DIR/SEQ.png (+ colorized, overlay, header; with encoding=coco-rle or "
        "polygons also the segments document, DIR/SEQ_segments.json; with a depth part DIR/SEQ_depth.png, "
        "16-bit mm)",
    )
    p.add_argument(
        "--video", metavar="OUT.mp4", help="re-encode the overlays (or colorized masks) to a video"
    )
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of --video (default 25)")
    p.add_argument("--server-key", metavar="FILE", help="publisher's public key file (enables CURVE)")
    p.add_argument(
        "--client-key", metavar="FILE", help="this client's .key_secret file (allowed by the publisher)"
    )
    p.add_argument("--stream", metavar="ID", help="only this stream id (exact match; default: every stream)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--stats-json", metavar="PATH", help="also write the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import cv2
    from rich.console import Console

    from stream.messages import MessageError
    from stream.sinks.base import SinkError
    from stream.subscriber import Subscriber

    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    if args.count is not None and args.count <= 0:
        raise SinkError(f"--count must be positive, got {args.count}")
    if args.timeout is not None and args.timeout <= 0:
        raise SinkError(f"--timeout must be positive, got {args.timeout}")
    save = Path(args.save) if args.save else None
    if save is not None:
        try:
            save.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"--save {save}: {e.strerror}") from None
    writer = None
    video_size = (0, 0)
    latencies: list[float] = []
    received_at: list[float] = []  # time.time() at reception
    published_at: list[float] = []  # the header's publish timestamps
    n = 0
    with Subscriber(
        args.endpoint,
        lossless=args.lossless,
        server_key=args.server_key,
        client_key=args.client_key,
        stream=args.stream,
    ) as sub:
        mode = "lossless" if args.lossless else "lossy"
        err.print(f"segstream subscribe: waiting for masks from {sub.address} ({mode}; Ctrl-C stops)")
        idle_since = time.monotonic()
        noticed = False
        try:
            while args.count is None or n < args.count:
                # short waits, so a silent endpoint is reported while we keep waiting
                left = None if args.timeout is None else args.timeout - (time.monotonic() - idle_since)
                if left is not None and left <= 0:
                    break
                msg = sub.recv(0.5 if left is None else min(0.5, left))
                if msg is None:
                    if sub.stats.ended:
                        break
                    if not noticed and time.monotonic() - idle_since >= WAIT_NOTICE_S:
                        noticed = True
                        state = (
                            "connected, no mask yet"
                            if sub.connected
                            else "nothing is listening there yet (connection refused); retrying"
                        )
                        err.print(f"segstream subscribe: still waiting for {sub.address}: {state}")
                    continue
                idle_since = time.monotonic()
                if save is not None or args.video:
                    try:  # the overlay JPEG is decoded only here; a corrupt one skips the message
                        frame = _picture(msg)
                    except MessageError as e:
                        sub._skip(e)
                        continue
                n += 1
                received_at.append(msg.received)
                published_at.append(float(msg.header["timestamps"]["publish"]))
                lat = msg.latency
                if lat is not None:
                    latencies.append(lat * 1000)
                if not args.quiet:
                    h = msg.header
                    lat_text = "   n/a" if lat is None else f"{lat * 1000:6.1f}"
                    console.print(
                        f"seq {h['seq']:>6} frame {h['frame_index']:>6} {h['width']}x{h['height']} "
                        f"{h['encoding']:>3} {msg.size / 1000:8.1f} kB  latency {lat_text} ms  "
                        f"gaps {sub.stats.gaps}"
                        + ("" if msg.segments is None else f"  segments {len(msg.segments['segments'])}")
                        # uncertainty parts (?maps=entropy,margin): their frame means, 0-1
                        + "".join(f"  {k} {float(m.mean()) / 255:.3f}" for k, m in sorted(msg.maps.items()))
                    )
                if save is not None:
                    stem = save / f"{msg.seq:08d}"
                    cv2.imwrite(f"{stem}.png", msg.mask)
                    cv2.imwrite(f"{stem}_color.png", frame if msg.overlay_jpeg is None else _colorize(msg))
                    if msg.overlay_jpeg is not None:
                        Path(f"{stem}_overlay.jpg").write_bytes(msg.overlay_jpeg)
                    Path(f"{stem}.json").write_text(json.dumps(msg.header))
                    if msg.segments is not None:
                        Path(f"{stem}_segments.json").write_text(json.dumps(msg.segments))
                    for k, m in msg.maps.items():  # entropy / margin: 8-bit grayscale PNGs
                        cv2.imwrite(f"{stem}_{k}.png", m)
                    if msg.depth is not None:  # RGB-D (?depth=raw|png): a 16-bit PNG in mm, as read
                        cv2.imwrite(f"{stem}_depth.png", msg.depth)
                if args.video:
                    if writer is None:
                        writer = _open_video(args.video, args.fps, frame.shape[1], frame.shape[0])
                        video_size = (frame.shape[1], frame.shape[0])
                    if (frame.shape[1], frame.shape[0]) != video_size:
                        frame = cv2.resize(frame, video_size)  # a mid-stream size change
                    writer.write(frame)
        except KeyboardInterrupt:
            pass
        finally:
            if writer is not None:
                writer.release()
        stats = sub.stats
    summary = summarize(n, stats, latencies, received_at, published_at)
    err.print(summary_table(args.endpoint, summary))
    if args.stats_json:
        try:
            Path(args.stats_json).write_text(json.dumps(summary, indent=2))
        except OSError as e:
            raise SinkError(f"--stats-json {args.stats_json}: {e.strerror}") from None
    if stats.missed_at_start:
        err.print(f"missed at start: {stats.missed_at_start} masks published before the first one received")
    if stats.end_reason:
        err.print(f"the publisher ended this subscription: {stats.end_reason}")
    elif stats.ended:
        err.print("end of stream: the publisher closed")
    if n == 0:
        err.print(f"segstream subscribe: no mask received from {args.endpoint}")
        return 1
    return 0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (NumPy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def mask_rate(received_at: list[float], published_at: list[float]) -> float:
    """Masks per second over the time the received masks span. Both spans count, the longer wins: a
    backlog read in one burst spans milliseconds of reception but its real span at the publisher,
    and a publisher clock that jumped is caught by the reception span."""
    if len(received_at) < 2:
        return 0.0
    span = max(received_at[-1] - received_at[0], max(published_at) - min(published_at))
    return (len(received_at) - 1) / span if span > 0 else 0.0


def summarize(n, stats, latencies, received_at, published_at) -> dict:
    return {
        "received": n,
        "gaps": stats.gaps,
        "stale": stats.stale,
        "missed_at_start": stats.missed_at_start,
        "skipped": dict(sorted(stats.skipped.items())),
        "bytes": stats.bytes,
        "fps": mask_rate(received_at, published_at),
        # None rather than NaN: the summary is also written as JSON
        "latency_ms": {
            q: percentile(latencies, v) if latencies else None for q, v in (("p50", 50), ("p95", 95))
        },
        "ended": stats.ended,
        "end_reason": stats.end_reason,
    }


def summary_table(endpoint: str, summary: dict):
    from rich.table import Table

    table = Table(title=f"segstream subscribe {endpoint}")
    columns = ("received", "gaps", "skipped", "MB", "fps")
    for col in (*columns, "latency p50 ms", "latency p95 ms", "ended"):
        table.add_column(col, justify="right")
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()) or "0"
    table.add_row(
        str(summary["received"]),
        str(summary["gaps"]),
        skipped,
        f"{summary['bytes'] / 1e6:.1f}",
        f"{summary['fps']:.1f}",
        *("n/a" if v is None else f"{v:.1f}" for v in summary["latency_ms"].values()),
        "yes" if summary["ended"] else "no",
    )
    return table


def _colorize(msg):
    import cv2

    if msg.classes is None:  # no table: spread the ids over the grey range so the picture still shows
        return cv2.applyColorMap((msg.mask.astype("uint16") * 23 % 256).astype("uint8"), cv2.COLORMAP_JET)
    return cv2.LUT(cv2.cvtColor(msg.mask, cv2.COLOR_GRAY2BGR), msg.classes.lut_bgr())


def _picture(msg):
    return msg.overlay if msg.overlay_jpeg is not None else _colorize(msg)


def _open_video(path: str, fps: float, width: int, height: int):
    import cv2

    from stream.sinks.base import SinkError

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SinkError(f"--video {path}: cannot open for writing")
    return writer
