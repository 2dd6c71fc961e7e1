"""`segstream worker STAGE`: run one pipeline stage in this process.

The supervisor starts every stage this way (``--context FILE``). By hand it places an infer worker
on another host::

    segstream worker infer --in tcp://capture-host:5555 --out tcp://capture-host:5556 --model m.onnx

(``segstream run ... --remote-infer tcp://*:5555 tcp://*:5556`` binds those addresses.)
"""

from __future__ import annotations

import argparse

HELP = "run one pipeline stage (infer on another host, or as started by the supervisor)"
DESCRIPTION = __doc__
STAGES = ("capture", "preprocess", "infer", "overlay")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=STAGES, help="which stage to run")
    p.add_argument("--context", metavar="FILE", help="stage context JSON written by the supervisor")
    p.add_argument(
        "--in", dest="inp", metavar="ENDPOINT", help="input endpoint (infer: pull+connect by default)"
    )
    p.add_argument("--out", metavar="ENDPOINT", help="output endpoint (infer: push+connect by default)")
    p.add_argument("--model", metavar="FILE", help="model file (infer)")
    p.add_argument("--device", default="auto", help="inference device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--batch", type=int, default=None, help="max batch (default: the model's)")
    # set by stream.launch for a stage forked from its template process: that process, not the
    # supervisor named in the context, is the parent this stage dies with
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)


def _standalone_context(args: argparse.Namespace):
    from engines.errors import SegstreamError
    from stream.config import PipelineConfig
    from stream.stages.base import StageContext
    from stream.transport import parse_endpoint

    if args.stage != "infer":
        raise SegstreamError(
            f"worker {args.stage}: only 'infer' runs standalone; other stages need --context"
        )
    missing = [f"--{n}" for n, v in (("in", args.inp), ("out", args.out), ("model", args.model)) if not v]
    if missing:
        raise SegstreamError(f"worker infer: missing {', '.join(missing)}")
    cfg = PipelineConfig(model=args.model, device=args.device, threads=args.threads, batch=args.batch)
    eps = {
        "in": str(parse_endpoint(args.inp, "pull", False)),
        "out": str(parse_endpoint(args.out, "push", False)),
    }
    return StageContext(
        stage="infer", name="infer-remote", config=__import__("json").loads(cfg.to_json()), endpoints=eps
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engines.errors import SegstreamError
    from stream.stages.base import StageContext

    if args.context:
        try:
            ctx = StageContext.from_json(Path(args.context).read_text())
        except (OSError, ValueError, TypeError) as e:
            raise SegstreamError(f"worker: cannot read context {args.context}: {e}") from None
        if args.parent_pid is not None:
            ctx.parent_pid = args.parent_pid
    else:
        ctx = _standalone_context(args)
    if ctx.stage == "capture":
        from stream.stages.capture import CaptureStage as cls
    elif ctx.stage == "preprocess":
        from stream.stages.preprocess import PreprocessStage as cls
    elif ctx.stage == "infer":
        from stream.stages.infer import InferStage as cls
    else:
        from stream.stages.overlay import OverlayStage as cls
    return cls(ctx).main()
