"""`segstream subscribe ENDPOINT`: receive published masks; print stats, save them, or re-encode a video."""

from __future__ import annotations

import argparse

HELP = "receive a published mask stream: per-message stats, save masks/overlays, or write a video"
DESCRIPTION = (
    "Connect to a mask stream published with --sink zmq-pub://HOST:PORT. By default the lossy endpoint "
    "(PORT: a slow subscriber misses masks and counts the gaps); --lossless uses the recorder endpoint "
    "(PORT+2: the publisher waits for this subscriber, nothing is missed). See docs/PROTOCOL.md."
)


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
        "--save", metavar="DIR", help="write each mask as DIR/SEQ.png (+ colorized, overlay, header)"
    )
    p.add_argument(
        "--video", metavar="OUT.mp4", help="re-encode the overlays (or colorized masks) to a video"
    )
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of --video (default 25)")
    p.add_argument("--server-key", metavar="FILE", help="publisher's public key file (enables CURVE)")
    p.add_argument(
        "--client-key", metavar="FILE", help="this client's .key_secret file (allowed by the publisher)"
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary")


def run(args: argparse.Namespace) -> int:
    import json
    import statistics
    import time
    from pathlib import Path

    import cv2
    from rich.console import Console
    from rich.table import Table

    from stream.sinks.base import SinkError
    from stream.subscriber import Subscriber

    console = Console(highlight=False)
    err = Console(stderr=True)
    if args.count is not None and args.count <= 0:
        raise SinkError(f"--count must be positive, got {args.count}")
    save = Path(args.save) if args.save else None
    if save is not None:
        try:
            save.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"--save {save}: {e.strerror}") from None
    writer = None
    latencies: list[float] = []
    first = last = None
    n = 0
    with Subscriber(
        args.endpoint, lossless=args.lossless, server_key=args.server_key, client_key=args.client_key
    ) as sub:
        mode = "lossless" if args.lossless else "lossy"
        err.print(f"subscribed to {sub.address} ({mode})")
        try:
            while args.count is None or n < args.count:
                msg = sub.recv(args.timeout)
                if msg is None:
                    break
                n += 1
                last = time.monotonic()
                first = first or last
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
                    )
                if save is not None or args.video:
                    frame = _picture(msg)
                if save is not None:
                    stem = save / f"{msg.seq:08d}"
                    cv2.imwrite(f"{stem}.png", msg.mask)
                    cv2.imwrite(f"{stem}_color.png", frame if msg.overlay_jpeg is None else _colorize(msg))
                    if msg.overlay_jpeg is not None:
                        Path(f"{stem}_overlay.jpg").write_bytes(msg.overlay_jpeg)
                    Path(f"{stem}.json").write_text(json.dumps(msg.header))
                if args.video:
                    if writer is None:
                        writer = _open_video(args.video, args.fps, frame.shape[1], frame.shape[0])
                    writer.write(frame)
        except KeyboardInterrupt:
            pass
        finally:
            if writer is not None:
                writer.release()
        stats = sub.stats
    table = Table(title=f"segstream subscribe {args.endpoint}")
    for col in ("received", "gaps", "skipped", "MB", "fps", "latency p50 ms", "latency p95 ms", "ended"):
        table.add_column(col, justify="right")
    fps = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    p50 = statistics.median(latencies) if latencies else float("nan")
    p95 = sorted(latencies)[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
    skipped = ", ".join(f"{k} {v}" for k, v in stats.skipped.items()) or "0"
    table.add_row(
        str(n),
        str(stats.gaps),
        skipped,
        f"{stats.bytes / 1e6:.1f}",
        f"{fps:.1f}",
        f"{p50:.1f}",
        f"{p95:.1f}",
        "yes" if stats.ended else "no",
    )
    err.print(table)
    if stats.ended:
        err.print("end of stream: the publisher closed")
    if n == 0:
        err.print(f"segstream subscribe: no mask received from {args.endpoint}")
        return 1
    return 0


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
