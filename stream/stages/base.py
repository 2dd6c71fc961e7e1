"""What every stage process shares: control sockets, heartbeats, parent watch, shutdown.

A stage is one OS process started by the supervisor (``python -m stream worker STAGE --context ...``,
usually forked from the template process of stream.launch) or by hand on another host
(``segstream worker infer --in ... --out ...``). It

- sends a heartbeat with its metrics snapshot every ``heartbeat_s`` (data flowing does not replace
  it: the supervisor watches these),
- obeys commands from the supervisor (``stop``, ``drain``, ``replay``),
- dies with its parent: PR_SET_PDEATHSIG on Linux plus a parent-pid check in the loop; when the
  parent is gone it unlinks the shared-memory ring it knows (the supervisor can no longer do it). The
  parent is ``StageContext.parent_pid``: the supervisor, or the forkserver it was forked from (which
  itself exits with the supervisor; ``worker --parent-pid``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from engines.errors import SegstreamError
from stream.metrics import StageMetrics

PR_SET_PDEATHSIG = 1


def tune_process() -> None:
    """Per-process settings every stage wants before its first frame (see stream.cpus)."""
    from stream.cpus import helper_threads, keep_freed_memory

    keep_freed_memory()
    if "cv2" in sys.modules:  # preloaded by the forkserver; a stage that never uses OpenCV skips it
        sys.modules["cv2"].setNumThreads(helper_threads())


@dataclass(frozen=True)
class Declares:
    """What a stage is to the graph: the supervisor knows stages only by this, never by name."""

    role: str  # source (starts a stream's frames), worker (shared by every stream), sink (ends a stream)
    per_stream: bool  # one instance per stream (capture, overlay) or shared by all (preprocess, infer)
    consumes: tuple[str, ...]  # the wires it reads
    produces: tuple[str, ...]  # the wires it writes
    restart: str  # live streams: restart | restart-and-replay | fatal (fatal to its stream when per_stream)
    restart_file: str  # file streams (lossless): the same choices


RESTART_POLICIES = ("restart", "restart-and-replay", "fatal")


@dataclass
class StageConfig:
    """The run settings every stage reads. Each stage's ``Config`` adds the few it needs, and its context
    carries only those (the pipeline picks them from the run's validated PipelineConfig)."""

    heartbeat_s: float = 0.5
    run_dir: str | None = None  # where ipc sockets and stage logs live

    @classmethod
    def pick(cls, d: dict[str, Any]) -> StageConfig:
        """The keys of ``d`` this config has (a whole run config may be given: the rest is not ours)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class StageContext:
    """Everything a stage needs from the supervisor (JSON-serializable)."""

    stage: str  # capture | preprocess | infer | overlay
    name: str  # instance name, e.g. infer-1
    config: dict[str, Any]  # the stage's Config as a dict (its own keys of the run's PipelineConfig)
    endpoints: dict[str, str] = field(default_factory=dict)  # role -> endpoint string
    ring: dict[str, Any] | None = None  # {"name": ..., "layout": {...}} or None (no shm)
    model: dict[str, Any] | None = None  # {"meta": json, "wants_uint8": bool, "max_batch": int}
    parent_pid: int | None = None
    seq_start: int = 0  # capture: first seq (a restarted live capture continues past the old ones)
    cpus: list[int] | None = None  # processors this stage may use (stream.cpus); None: any
    instance: int = 0  # how many instances of this stage ran before this one (0: first start)
    stream: str = "0"  # capture/overlay: the stream this instance serves ("" for shared stages)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> StageContext:
        return cls(**json.loads(text))


def die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGTERM us when the parent exits (Linux); elsewhere the loop polls."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if parent_pid is not None and os.getppid() != parent_pid:  # parent died before prctl took effect
        raise SystemExit(143)


class Stage:
    """Base loop helper; subclasses implement ``setup``, ``step`` and ``teardown``."""

    stage = "?"
    declares: Declares
    Config: type[StageConfig] = StageConfig

    def __init__(self, ctx: StageContext) -> None:
        import zmq

        from stream.cpus import pin

        self.ctx = ctx
        self.cfg = self.Config.pick(ctx.config)
        pin(ctx.cpus)
        self.metrics = StageMetrics(ctx.name)
        self.zctx = zmq.Context.instance()
        self.ctl_up = None
        self.ctl_down = None
        self.stopping = False
        self.draining = False
        self._last_hb = 0.0
        self._reported = False  # has any report reached the control socket yet
        self.ring = None
        self.parent_pid = ctx.parent_pid

    # -- plumbing -------------------------------------------------------------------------------
    def connect_control(self) -> None:
        from stream.transport import CONTROL_HWM, open_socket

        if "ctl_up" in self.ctx.endpoints:
            self.ctl_up = open_socket(self.zctx, self.ctx.endpoints["ctl_up"], hwm=CONTROL_HWM)
        if "ctl_down" in self.ctx.endpoints:
            self.ctl_down = open_socket(self.zctx, self.ctx.endpoints["ctl_down"], hwm=CONTROL_HWM)

    def attach_ring(self) -> None:
        if self.ctx.ring:
            from stream.shm import FrameRing, RingLayout

            self.ring = FrameRing.attach(self.ctx.ring["name"], RingLayout(**self.ctx.ring["layout"]))

    def ring_for(self, hdr):
        """The ring holding a frame's pixels: the one the header names (a shared stage serves every
        stream's ring, attached on first sight and kept), else this stage's own. Raises HeaderError for a
        ring that cannot be attached (the message is then counted and dropped, not fatal)."""
        if not hdr.ring or (self.ring is not None and self.ring.name == hdr.ring[0]):
            return self.ring
        if not getattr(self, "attach_rings", True):  # input from another host: it names no ring of ours
            return None
        rings = self.__dict__.setdefault("_rings", {})
        ring = rings.get(hdr.ring[0])
        if ring is None:
            from stream.headers import HeaderError
            from stream.shm import FrameRing, RingLayout, ShmError

            try:
                ring = FrameRing.attach(hdr.ring[0], RingLayout(*hdr.ring[1:]))
            except ShmError as e:
                raise HeaderError(f"seq {hdr.seq} of stream {hdr.stream}: {e}") from None
            rings[hdr.ring[0]] = ring
        return ring

    def forget_ring(self, name: str) -> None:
        """Detach a removed stream's ring (its owner unlinked it; the mapping goes with this close)."""
        ring = self.__dict__.get("_rings", {}).pop(name, None)
        if ring is not None:
            ring.close()

    def report(self, kind: str, **data: Any) -> None:
        if self.ctl_up is None:
            return
        import zmq

        msg = {"stage": self.ctx.name, "type": kind, "pid": os.getpid(), "t": time.time(), **data}
        raw = json.dumps(msg).encode()
        try:
            self.ctl_up.send(raw, zmq.NOBLOCK)
            self._reported = True
            return
        except zmq.Again:
            pass
        # no peer yet (ctl_up waits for a live one): a stage that sets up in milliseconds, as a forked one
        # does, reports in before its connection is up; the first report, and any that is not a routine
        # heartbeat (fatal, ready, exit...), waits for it briefly rather than being lost (a lost first
        # heartbeat held the whole run's start for heartbeat_s)
        if kind == "hb" and self._reported:
            return
        if self.ctl_up.poll(int(max(1.0, 2 * self.cfg.heartbeat_s) * 1000), zmq.POLLOUT):
            try:
                self.ctl_up.send(raw, zmq.NOBLOCK)
                self._reported = True
            except zmq.Again:
                pass

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_hb >= self.cfg.heartbeat_s:
            self._last_hb = now
            self.check_parent()
            self.report("hb", metrics=self.metrics.snapshot(), extra=self.heartbeat_extra())

    def heartbeat_extra(self) -> dict[str, Any]:
        return {}

    def check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.orphaned()

    def orphaned(self) -> None:
        """Parent gone: nobody else will clean up, so unlink the ring, finalize what we hold
        (the overlay's sinks: an mp4 stays playable), remove the run directory, and leave."""
        if self.ctx.ring:
            from stream.shm import unlink

            unlink(self.ctx.ring["name"])
        try:
            self.teardown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        if self.cfg.run_dir:
            import shutil

            shutil.rmtree(self.cfg.run_dir, ignore_errors=True)
        os._exit(3)

    def poll_control(self) -> list[dict[str, Any]]:
        if self.ctl_down is None:
            return []
        import zmq

        cmds = []
        while True:
            try:
                raw = self.ctl_down.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                cmd = json.loads(raw)
            except ValueError:
                continue
            # to: None (everyone), an instance name, or "role:ROLE"; never the stage kind, which stream 0's
            # instances share as their names ("overlay" must not reach overlay@cam1)
            target = cmd.get("to")
            role = "role:" + self.declares.role if hasattr(self, "declares") else None
            if target in (None, self.ctx.name, role):
                cmds.append(cmd)
        for cmd in cmds:
            if cmd.get("cmd") == "stop":
                self.stopping = True
            elif cmd.get("cmd") == "drain":
                self.draining = True
            self.on_command(cmd)
        return cmds

    def on_command(self, cmd: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    # -- data sockets (``self.inp``/``self.poller``/``self.out``, opened by the subclass) ----------
    def incoming(self, timeout_s: float) -> Iterator[list]:
        """Wait up to ``timeout_s`` for input, then yield every message already queued on ``self.inp``."""
        import zmq

        if not self.poller.poll(int(timeout_s * 1000)):
            return
        while True:
            try:
                frames = self.inp.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            yield frames

    def send_out(self, msg: list) -> None:
        """Blocking send on ``self.out``: a full queue means every downstream worker is busy, which is
        the backpressure we want; heartbeats and control stay alive while we wait."""
        import zmq

        while not self.stopping:
            try:
                self.out.send_multipart(msg, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                time.sleep(0.002)
                self.heartbeat()
                self.poll_control()

    # -- lifecycle ------------------------------------------------------------------------------
    def setup(self) -> None:  # noqa: B027
        pass

    def step(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:  # noqa: B027
        pass

    def main(self) -> int:
        def on_term(signum, frame):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                self.orphaned()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        if self.parent_pid is not None:
            # Ctrl-C in a terminal reaches the whole process group; the supervisor orchestrates the
            # drain, so stages ignore SIGINT rather than dying mid-frame.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent(self.parent_pid)
        tune_process()
        code = 0
        try:
            self.connect_control()
            self.attach_ring()
            self.setup()
            poller = getattr(self, "poller", None)
            if poller is not None and self.ctl_down is not None:
                # a stage waiting for input wakes on stop/drain at once instead of at its poll timeout
                # (up to heartbeat_s per stage at the end of every run)
                import zmq

                poller.register(self.ctl_down, zmq.POLLIN)
            self.heartbeat(force=True)
            while not self.stopping:
                self.step()
                self.poll_control()
                self.heartbeat()
        except SegstreamError as e:  # the user's to fix: the supervisor prints it as one line
            self.report("fatal", message=str(e))
            raise
        finally:
            try:
                self.teardown()
            finally:
                self.report("exit", metrics=self.metrics.snapshot(), extra=self.heartbeat_extra())
                if self.ring is not None:
                    self.ring.close()
                for ring in self.__dict__.get("_rings", {}).values():
                    ring.close()
                if self.ctl_up is not None:
                    self.ctl_up.close(linger=500)  # let the exit/fatal report reach the supervisor
                self.zctx.destroy(linger=0)
        return code
