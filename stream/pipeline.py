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

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from stream import cpus
from stream.config import ConfigError, PipelineConfig
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
    from stream.sources.depth import ring_bytes

    depth_bytes = ring_bytes(cfg.depth, frame_size)  # RGB-D: the paired depth image beside the frame
    free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").is_dir() else 0
    # a full tmpfs would SIGBUS the writer: without room for the frames, the slots keep only the model
    # inputs and frames travel through the sockets
    for frame_cap in (frame_bytes, 0):
        layout = RingLayout(
            slots=cfg.slots, frame_bytes=frame_cap, input_bytes=input_bytes, depth_bytes=depth_bytes
        )
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


def graph() -> dict[str, Any]:
    """The whole graph in one place: every stage kind (its class: what it declares, ``declares``, and the
    few settings its context carries, ``Config``; stream.stages.base).

    ::

        capture[stream] --frames--> preprocess --inputs--> infer x N --results-<stream>--> overlay[stream]
             ^                                                                               |
             +-------------------------------- acks-<stream> (credits) ----------------------+
    """
    from stream.stages.capture import CaptureStage
    from stream.stages.infer import InferStage
    from stream.stages.overlay import OverlayStage
    from stream.stages.preprocess import PreprocessStage

    return {c.stage: c for c in (CaptureStage, PreprocessStage, InferStage, OverlayStage)}


class Builder:
    """Stage processes for a run: the shared ones once, a capture and an overlay per stream (also for a
    stream added while the run goes on: ``stream_stages``)."""

    def __init__(self, cfg: PipelineConfig, model: dict[str, Any], run_dir: Path) -> None:
        self.cfg = cfg
        self.model = model
        self.run_dir = run_dir
        self.conf = json.loads(cfg.to_json())
        self.conf["run_dir"] = str(run_dir)
        self.cores = cpus.plan(cfg.threads, cfg.workers) if cfg.pin_cpus else None
        self.graph = graph()
        self.remote_in, self.remote_out = (
            (cfg.remote_infer + [None, None])[:2] if cfg.remote_infer else (None, None)
        )

    def ipc(self, name: str) -> str:
        return f"ipc://{self.run_dir}/{name}"

    def proc(
        self,
        stage: str,
        name: str,
        conf: dict,
        stream: str = "",
        live: bool = False,
        ring=None,
        model: dict[str, Any] | None = None,
        **eps,
    ):
        """One stage process: its context holds its own Config's keys of ``conf``, nothing else."""
        cls = self.graph[stage]
        decl = cls.declares
        own = None
        if self.cores:
            own = (
                self.cores.get(name if name != "infer" else "infer-1")
                if stage == "infer"
                else self.cores["other"]
            )
        ctl = {
            "ctl_up": "push+connect:" + self.ipc("ctl-up"),
            "ctl_down": "sub+connect:" + self.ipc("ctl-down"),
        }
        ring_info = {"name": ring.name, "layout": ring.layout.to_dict()} if ring is not None else None
        ctx = StageContext(
            stage=stage,
            name=name,
            config=cls.Config.pick(conf).to_dict(),
            endpoints={**ctl, **eps},
            ring=ring_info,
            model=model or self.model,
            cpus=own,
            stream=stream,
        )
        return StageProc(
            ctx,
            role=decl.role,
            stream=stream,
            policy=decl.restart if live or not decl.per_stream else decl.restart_file,
        )

    def shared_stages(self) -> list[StageProc]:
        cfg = self.cfg
        pre_eps = {"in": "pull+bind:" + self.ipc("frames"), "out": "push+bind:" + self.ipc("inputs")}
        if self.remote_in:
            pre_eps["out_remote"] = self.remote_in
        stages = [self.proc("preprocess", "preprocess", self.conf, **pre_eps)]
        for i in range(cfg.workers):
            name = "infer" if cfg.workers == 1 else f"infer-{i + 1}"
            # {stream}: one results socket per stream, opened on its first frame
            eps = {
                "in": "pull+connect:" + self.ipc("inputs"),
                "out": "push+connect:" + self.ipc("results-{stream}"),
            }
            stages.append(self.proc("infer", name, self.conf, **eps))
        return stages

    def infer_stages(self, gen: int, path: str, model: dict[str, Any]) -> list[StageProc]:
        """A model swap's fresh infer workers (stream.swap): generation ``gen`` pulls from its own inputs
        socket, which preprocess binds, and sends to the same results sockets."""
        from stream.swap import gen_endpoint

        conf = {**self.conf, "model": path}
        stages = []
        for i in range(self.cfg.workers):
            name = f"infer-g{gen}" if self.cfg.workers == 1 else f"infer-g{gen}-{i + 1}"
            eps = {
                "in": gen_endpoint("pull+connect:" + self.ipc("inputs"), gen),
                "out": "push+connect:" + self.ipc("results-{stream}"),
            }
            stages.append(self.proc("infer", name, conf, model=model, **eps))
        return stages

    def stream_stages(self, spec, ring) -> list[StageProc]:
        """A stream's capture and overlay, with its own config (source, sinks, options) and ring."""
        from stream.commands.run import is_live
        from stream.streams import stage_name

        scfg = self.cfg.for_stream(spec)
        conf = json.loads(scfg.to_json())
        conf["run_dir"] = str(self.run_dir)
        maps = scfg.wants_maps()
        if maps and scfg.infer_mode == "tiled":
            raise ConfigError(f"{', '.join(maps)} maps are not made in tiled mode (--infer-mode)")
        # what the stream's sinks need from infer besides class ids, asked for in every frame header
        conf["want"] = [*maps, *(["confidence"] if scfg.wants_confidence() else [])]
        live = is_live(spec.uri, scfg.live)
        sid = spec.id
        cap = self.proc(
            "capture",
            stage_name("capture", sid),
            conf,
            stream=sid,
            live=live,
            ring=ring,
            out="push+connect:" + self.ipc("frames"),
            acks="pull+bind:" + self.ipc(f"acks-{sid}"),
        )
        ov_eps = {
            "in": "pull+bind:" + self.ipc(f"results-{sid}"),
            "acks": "push+connect:" + self.ipc(f"acks-{sid}"),
        }
        if self.remote_out:
            ov_eps["in_remote"] = self.remote_out
        ov = self.proc(
            "overlay", stage_name("overlay", sid), conf, stream=sid, live=live, ring=ring, **ov_eps
        )
        return [cap, ov]


def build(cfg: PipelineConfig, model: dict[str, Any], run_dir: Path, ring) -> list[StageProc]:
    """The stages of a one-stream run (``ring``: its ring or None)."""
    b = Builder(cfg, model, run_dir)
    return b.shared_stages() + b.stream_stages(cfg.stream_specs()[0], ring)


class StreamFactory:
    """Makes a stream's stages and its ring (sized from its source when that can be probed); for a stream
    added while the run goes on, first checks it as ``segstream run`` checks its own: the source opens,
    the sinks can be written, no sink is another stream's, nothing is exposed without consent."""

    def __init__(self, cfg: PipelineConfig, model: dict[str, Any], builder: Builder, insecure: bool) -> None:
        self.cfg = cfg
        self.model = model
        self.builder = builder
        self.insecure = insecure
        self.active: dict[str, Any] = {}  # stream id -> StreamSpec
        self.rings: list = []  # every ring made (closed by the supervisor, or here on a failed start)

    def make(self, spec, info=None, check: bool = False) -> tuple[list[StageProc], Any]:
        from stream.shm import FrameRing

        scfg = self.cfg.for_stream(spec)
        if check:
            from stream.exposure import check_exposure
            from stream.streams import check_distinct
            from stream.uri import open_sink

            check_distinct([*self.active.values(), spec])
            for s in spec.sinks:
                open_sink(s).preflight()
            check_exposure(spec.sinks, [], insecure=self.insecure)
            if info is None:
                info = probe_source(scfg)
        elif info is None:
            info = probe_source(scfg)
        size = (info.width, info.height) if info is not None and info.width > 0 else None
        layout = ring_layout(self.cfg, self.model, size) if self.cfg.shm else None
        ring = FrameRing.create(layout) if layout is not None else None
        if ring is not None:
            self.rings.append(ring)
        try:
            stages = self.builder.stream_stages(spec, ring)
        except Exception:
            if ring is not None:
                ring.close()
                self.rings.remove(ring)
            raise
        self.active[spec.id] = spec
        return stages, ring

    def forget(self, sid: str) -> None:
        self.active.pop(sid, None)


def run_pipeline(
    cfg: PipelineConfig,
    on_progress=None,
    model: dict[str, Any] | None = None,
    source=None,
    insecure: bool = False,
) -> Outcome:
    """Run the pipeline to the end (or to Ctrl-C); the run directory and every ring are always removed.
    ``source`` is ``probe_source``'s SourceInfo of the first stream when the caller has it (sizes the
    ring); the other streams' sources are probed here."""
    from stream.shm import remove_orphans

    remove_orphans()  # segments of supervisors that were SIGKILLed before their tracker could run
    remove_orphan_run_dirs()
    model = model or probe_model(cfg)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
    builder = Builder(cfg, model, run_dir)
    factory = StreamFactory(cfg, model, builder, insecure)
    control = None
    done = False
    try:
        stages = builder.shared_stages()
        rings = {}
        for i, spec in enumerate(cfg.stream_specs()):
            st, ring = factory.make(spec, source if i == 0 else None)
            stages += st
            rings[spec.id] = ring
        sup = Supervisor(
            cfg,
            stages,
            run_dir,
            ctl_up="pull+bind:" + f"ipc://{run_dir}/ctl-up",
            ctl_down="pub+bind:" + f"ipc://{run_dir}/ctl-down",
            rings=rings,
            on_progress=on_progress,
            factory=factory,
        )
        if cfg.control:
            from stream.control import ControlServer, read_token

            control = ControlServer(cfg.control, sup.api_handlers(), read_token(cfg.control_token))
            sup.control = control
        outcome = sup.run()
        done = True  # the supervisor closed (and unlinked) every ring it knew
        if not outcome.ok and outcome.failed_stage and not outcome.fatal:
            sp = sup.stages.get(outcome.failed_stage)
            outcome.report["failed_stage_log"] = sup.last_lines(sp) if sp else []
        return outcome
    finally:
        if not done:
            if control is not None:
                control.close()
            for ring in factory.rings:
                ring.close()
        shutil.rmtree(run_dir, ignore_errors=True)
