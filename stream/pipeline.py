"""Build the process graph for one run from a PipelineConfig and hand it to the Supervisor.

Graph (same host; ``ipc`` sockets live in a private run directory)::

    capture --frames--> preprocess --inputs--> infer x N --results--> overlay
       ^                                                                 |
       +------------------------------ acks (credits) ------------------+

Pixels stay in the shared-memory ring; sockets carry headers (and masks, which are small). The ring's
frame regions are sized from the source when it can be probed cheaply (file, image folder, synthetic;
1080p otherwise); a frame larger than its slot travels inline and still holds the slot (its credit and
its model input), so any size works, 4K included.
With ``remote_infer`` the inputs PUSH also binds a tcp address and the results PULL another, so
``segstream worker infer`` processes on other hosts join the same load-balanced pool; inputs then
travel inline.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from stream import cpus
from stream.config import PipelineConfig
from stream.stages.base import StageContext
from stream.supervisor import Outcome, StageProc, Supervisor

FRAME_CAPACITY = 1920 * 1080 * 3  # ring frame region when the source's size is unknown (camera, network)
RUN_DIR_PREFIX = "segstream-run-"  # + "<supervisor pid>-": the next run removes folders of dead pids


def probe_source(cfg: PipelineConfig):
    """Open and close the source once when that is cheap and harmless (file, image folder, synthetic):
    a missing or unreadable input is reported before any process starts, and the ring can be sized for
    the source's frames. Cameras and network streams are left to capture (a second open may fail or take
    seconds); None for them."""
    from stream.sources.file import FileSource
    from stream.sources.images import ImageSource
    from stream.sources.synthetic import SyntheticSource
    from stream.uri import open_source

    src = open_source(cfg.source)
    if not isinstance(src, (FileSource, ImageSource, SyntheticSource)):
        return None
    try:
        return src.open()
    finally:
        src.close()


def remove_orphan_run_dirs(tmp: str | None = None) -> list[str]:
    """Remove run folders whose supervisor (pid in the name) is gone: a whole process group killed with
    SIGKILL leaves nobody to clean up, so the next run does (as for shared-memory segments)."""
    removed = []
    base = Path(tmp or tempfile.gettempdir())
    try:
        entries = list(base.glob(RUN_DIR_PREFIX + "*"))
    except OSError:
        return removed
    for d in entries:
        try:
            pid = int(d.name[len(RUN_DIR_PREFIX) :].split("-", 1)[0])
            if not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid():
                continue
        except (ValueError, OSError):
            continue  # not ours to judge (no pid in the name, someone else's folder)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
        except PermissionError:
            pass  # alive, another user's process
    return removed


def probe_model(cfg: PipelineConfig) -> dict[str, Any]:
    """Open the model once to read what the other stages need (metadata, input layout)."""
    from engines.runtime import backend_for, load

    backend = backend_for(cfg.model)
    if cfg.backend != "auto" and cfg.backend != backend:
        from stream.config import ConfigError

        raise ConfigError(
            f"config key 'backend' = {cfg.backend!r}: the model file {cfg.model} is a {backend} model"
        )
    # an ONNX file's metadata is read from the file alone: no session here, the infer stage builds the
    # only one (import + graph optimization cost ~0.2 s of start-up otherwise)
    from engines.runtime.probe import probe

    light = probe(cfg.model)
    if light is not None:
        return light
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


def ring_layout(cfg: PipelineConfig, model: dict[str, Any], frame_size: tuple[int, int] | None = None):
    """Slots sized for the source's frames (``frame_size`` = (w, h) when probed, else up to 1080p); a
    frame that does not fit a slot travels inline but still holds its slot (credit and model input)."""
    from engines.meta import ModelMeta
    from stream.shm import RingLayout

    meta = ModelMeta.from_json(model["meta"])
    w, h = meta.input_size
    input_bytes = w * h * meta.channels * (1 if model["wants_uint8"] else 4)
    frame_bytes = frame_size[0] * frame_size[1] * 3 if frame_size else FRAME_CAPACITY
    free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").is_dir() else 0
    # a full tmpfs would SIGBUS the writer: without room for the frames, the slots keep only the model
    # inputs and frames travel through the sockets
    for frame_cap in (frame_bytes, 0):
        layout = RingLayout(slots=cfg.slots, frame_bytes=frame_cap, input_bytes=input_bytes)
        if layout.total_bytes <= free * 0.8:
            if frame_cap != frame_bytes:
                print(
                    f"segstream: /dev/shm has {free >> 20} MiB free; sending frames through sockets",
                    file=sys.stderr,
                )
            return layout
    print(
        f"segstream: /dev/shm has {free >> 20} MiB free; sending everything through sockets", file=sys.stderr
    )
    return None


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


def run_pipeline(
    cfg: PipelineConfig,
    on_progress=None,
    model: dict[str, Any] | None = None,
    source=None,
) -> Outcome:
    """Run one pipeline to the end (or to Ctrl-C); the run directory and the ring are always removed.
    ``source`` is ``probe_source``'s SourceInfo when the caller has it (sizes the ring)."""
    from stream.shm import FrameRing, remove_orphans

    remove_orphans()  # segments of supervisors that were SIGKILLed before their tracker could run
    remove_orphan_run_dirs()
    model = model or probe_model(cfg)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
    ring = None
    try:
        size = (source.width, source.height) if source is not None and source.width > 0 else None
        layout = ring_layout(cfg, model, size) if cfg.shm else None
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
