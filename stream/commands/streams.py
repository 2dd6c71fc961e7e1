"""`segstream streams add|remove|list --control ENDPOINT`: change the streams of a running pipeline.

The run must have been started with ``--control ENDPOINT`` (stream.control)::

    segstream run cam0.mp4 --control tcp://127.0.0.1:7000 &
    segstream streams add "rtsp://cam2/live" --id cam2 --sink cam2.mp4 --control tcp://127.0.0.1:7000
    segstream streams list --control tcp://127.0.0.1:7000
    segstream streams remove cam2 --control tcp://127.0.0.1:7000      # drained, cam2.mp4 finalized
    segstream streams model new.onnx --control tcp://127.0.0.1:7000   # switched at a frame boundary
"""

from __future__ import annotations

import argparse

HELP = "add, remove or list the streams of a running pipeline (segstream run --control ...)"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_ in (
        ("add", "add a stream: its source URI, id and sinks"),
        ("remove", "remove a stream: its source stops, what is in flight is written, sinks finalized"),
        ("list", "the run's streams with their state and counters (JSON with --json)"),
        ("model", "swap the model: new infer workers load and warm it, then take over at a frame boundary"),
    ):
        a = sub.add_parser(name, help=help_)
        a.add_argument("--control", required=True, metavar="ENDPOINT", help="the run's --control endpoint")
        a.add_argument("--control-token", metavar="FILE", help="file holding the run's control token")
        if name == "add":
            a.add_argument("uri", help="source URI, as for segstream run")
            a.add_argument("--id", required=True, help="stream id (letters, digits, _ . -)")
            a.add_argument("--sink", action="append", default=[], metavar="SPEC", help="output (repeatable)")
            a.add_argument("--live", action=argparse.BooleanOptionalAction, default=None)
            a.add_argument("--max-frames", type=int, default=None, metavar="N")
        elif name == "remove":
            a.add_argument("id", help="stream id")
        elif name == "model":
            a.add_argument("model", help="the new model file (checked as at start-up; refused: old one runs)")
            a.add_argument("--json", action="store_true", help="print the reply as JSON")
        else:
            a.add_argument("--json", action="store_true", help="print the reply as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from stream.control import read_token, request
    from stream.streams import MULTI_DEFAULT_SINK

    token = read_token(args.control_token)
    if args.action == "add":
        table = {"id": args.id, "uri": args.uri, "sinks": args.sink or [MULTI_DEFAULT_SINK]}
        if args.live is not None:
            table["live"] = args.live
        if args.max_frames is not None:
            table["max_frames"] = args.max_frames
        request(args.control, {"cmd": "add", "stream": table}, token)
        print(f"added stream {args.id}")
    elif args.action == "remove":
        reply = request(args.control, {"cmd": "remove", "id": args.id}, token)
        print(f"removing stream {args.id}" + (" (draining)" if reply.get("draining") else ""))
    elif args.action == "model":
        from pathlib import Path

        path = args.model if "://" in args.model else str(Path(args.model).resolve())  # the run's cwd differs
        # answered once switched: loading and warming a model takes seconds, minutes on a busy machine
        reply = request(args.control, {"cmd": "model", "model": path}, token, timeout_ms=300_000)
        if args.json:
            print(json.dumps({k: v for k, v in reply.items() if k != "ok"}, indent=2))
        else:
            for sid, s in reply.get("streams", {}).items():
                gap = s.get("gap_ms")
                print(
                    f"stream {sid}: switched to {path} at seq {s.get('seq')}"
                    + (f" (gap {gap:.0f} ms)" if gap is not None else "")
                )
            if not reply.get("streams"):
                print(f"switched to {path} (no stream has written a frame of it yet)")
    else:
        reply = request(args.control, {"cmd": "list"}, token)
        if args.json:
            print(json.dumps(reply["streams"], indent=2))
        for s in [] if args.json else reply["streams"]:
            lat = s.get("latency_ms", {})
            drops = sum(s.get("drops", {}).values())
            print(
                f"{s['id']:<12} {s['state']:<8} {s['frames']:>7} frames  p50 {lat.get('p50', 0):6.1f} ms  "
                f"p99 {lat.get('p99', 0):6.1f} ms  drops {drops}"
                + (f"  ({s['error']})" if s.get("error") else "")
            )
    return 0
