"""Build the process graph for one run from a PipelineConfig and hand it to the Supervisor.

Graph (same host; ``ipc`` sockets live in a private run directory)::

    capture --frames--> preprocess --inputs--> infer x N --results--> overlay
       ^                                                                 |
       +------------------------------ acks (credits) ------------------+

Pixels stay in the shared-memory ring; sockets carry headers (and masks, which are small).
With ``remote_infer`` the inputs PUSH also binds a tcp address and the results PULL another, so
``segstream worker infer`` processes on other hosts join the same load-balanced pool; inputs then
travel inline.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from stream import cpus
from stream.config import PipelineConfig
from stream.stages.base import StageContext
from stream.supervisor import Outcome, StageProc, Supervisor

FRAME_CAPACITY = 1920 * 1080 * 3  # ring slot size for frames; larger frames travel inline


def probe_model(cfg: PipelineConfig) -> dict[str, Any]:
    """Open the model once to read what the other stages need (metadata, input layout)."""
    from engines.runtime import backend_for, load

    backend = backend_for(cfg.model)
    if cfg.backend != "auto" and cfg.backend != backend:
        from stream.config import ConfigError

        raise ConfigError(
            f"config key 'backend' = {cfg.backend!r}: the model file {cfg.model} is a {backend} model"
        )
    rt = load(cfg.model, device="cpu" if backend == "onnxruntime" else cfg.device, threads=1)
    try:
        return {
            "meta": rt.meta.to_json(),
            "wants_uint8": bool(rt.wants_uint8),
            "max_batch": rt.max_batch,
            "backend": rt.backend,
        }
    finally:
        rt.close()


def ring_layout(cfg: PipelineConfig, model: dict[str, Any]):
    from engines.meta import ModelMeta
    from stream.shm import RingLayout

    meta = ModelMeta.from_json(model["meta"])
    w, h = meta.input_size
    input_bytes = w * h * meta.channels * (1 if model["wants_uint8"] else 4)
    layout = RingLayout(slots=cfg.slots, frame_bytes=FRAME_CAPACITY, input_bytes=input_bytes)
    free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").is_dir() else 0
    if layout.total_bytes > free * 0.8:  # a full tmpfs would SIGBUS the writer: go inline instead
        print(
            f"segstream: /dev/shm has {free >> 20} MiB free; sending frames through sockets", file=sys.stderr
        )
        return None
    return layout


def build(cfg: PipelineConfig, model: dict[str, Any], run_dir: Path, ring) -> list[StageProc]:
    ipc = lambda name: f"ipc://{run_dir}/{name}"
    ctl = {"ctl_up": "push+connect:" + ipc("ctl-up"), "ctl_down": "sub+connect:" + ipc("ctl-down")}
    ring_info = {"name": ring.name, "layout": ring.layout.to_dict()} if ring is not None else None
    conf = __import__("json").loads(cfg.to_json())
    conf["run_dir"] = str(run_dir)

    cores = cpus.plan(cfg.threads, cfg.workers) if cfg.pin_cpus else None

    def ctx(stage: str, name: str, **eps: str) -> StageContext:
        own = None
        if cores:
            own = cores.get(name if name != "infer" else "infer-1") if stage == "infer" else cores["other"]
        return StageContext(
            stage=stage,
            name=name,
            config=conf,
            endpoints={**ctl, **eps},
            ring=ring_info,
            model=model,
            cpus=own,
        )

    remote_in, remote_out = (cfg.remote_infer + [None, None])[:2] if cfg.remote_infer else (None, None)
    stages = [
        StageProc(
            ctx("capture", "capture", out="push+bind:" + ipc("frames"), acks="pull+bind:" + ipc("acks"))
        ),
        StageProc(
            ctx(
                "preprocess",
                "preprocess",
                **{
                    "in": "pull+connect:" + ipc("frames"),
                    "out": "push+bind:" + ipc("inputs"),
                    **({"out_remote": remote_in} if remote_in else {}),
                },
            )
        ),
    ]
    for i in range(cfg.workers):
        name = "infer" if cfg.workers == 1 else f"infer-{i + 1}"
        stages.append(
            StageProc(
                ctx(
                    "infer",
                    name,
                    **{"in": "pull+connect:" + ipc("inputs"), "out": "push+connect:" + ipc("results")},
                )
            )
        )
    stages.append(
        StageProc(
            ctx(
                "overlay",
                "overlay",
                **{
                    "in": "pull+bind:" + ipc("results"),
                    "acks": "push+connect:" + ipc("acks"),
                    **({"in_remote": remote_out} if remote_out else {}),
                },
            )
        )
    )
    return stages


def run_pipeline(cfg: PipelineConfig, on_progress=None, model: dict[str, Any] | None = None) -> Outcome:
    """Run one pipeline to the end (or to Ctrl-C); the run directory and the ring are always removed."""
    from stream.shm import FrameRing, remove_orphans

    remove_orphans()  # segments of supervisors that were SIGKILLed before their tracker could run
    model = model or probe_model(cfg)
    run_dir = Path(tempfile.mkdtemp(prefix="segstream-run-"))
    ring = None
    try:
        layout = ring_layout(cfg, model) if cfg.shm else None
        if layout is not None:
            ring = FrameRing.create(layout)
        stages = build(cfg, model, run_dir, ring)
        sup = Supervisor(
            cfg,
            stages,
            run_dir,
            ctl_up="pull+bind:" + f"ipc://{run_dir}/ctl-up",
            ctl_down="pub+bind:" + f"ipc://{run_dir}/ctl-down",
            ring=ring,
            on_progress=on_progress,
        )
        outcome = sup.run()
        ring = None  # the supervisor closed (and unlinked) it
        if not outcome.ok and outcome.failed_stage and not outcome.fatal:
            sp = sup.stages.get(outcome.failed_stage)
            outcome.report["failed_stage_log"] = sup.last_lines(sp) if sp else []
        return outcome
    finally:
        if ring is not None:
            ring.close()
        shutil.rmtree(run_dir, ignore_errors=True)
