"""Start every stage process, watch heartbeats, restart with backoff, shut down cleanly.

Stages are ``python -m stream worker STAGE --context FILE`` processes, started by a launcher
(stream.launch: forked from a template process that imported everything once, or fresh interpreters);
their output goes to one log file each, whose last lines are printed when the supervisor gives up on a
stage.

Restart policy: a stage that exits unexpectedly or sends no heartbeat for ``stall_timeout_s`` is
restarted after ``backoff_s * 2**(n-1)``; more than ``restart_budget`` restarts within
``restart_window_s`` and the run fails (non-zero exit, stage named, its last log lines shown). A stalled
stage is stopped with SIGTERM (and SIGCONT, should it be stopped) and gets ``term_grace_s`` to finalize
its outputs before SIGKILL: an overlay that stalls on a file still leaves a playable mp4. A restarted
overlay (live source) writes its video to the next segment file (out.001.mp4, ...); the summary counts
the frames of every instance.

Remote infer workers (``--remote-infer``) are not the supervisor's children: preprocess reports each one
whose connection drops, and capture re-sends the frames in flight (files). With frames in flight and no
result for ``stall_timeout_s`` they are re-sent again; for ``remote_timeout_s`` the run ends with an
error naming the endpoint, so a run never waits forever for a worker.

Frames in flight when a stage dies (file sources): capture still holds their slots (no ack came
back), so once the new instance is up the supervisor tells capture to ``replay`` them; the overlay
stage drops duplicates. No frame is lost and the output keeps exactly one frame per input frame.
Live sources do not replay (stale frames are worthless): the overlay skips the gap and counts it.
Capture and overlay own the source and the sinks; for file sources they are not restartable (the
mp4 cannot be resumed) and their crash ends the run with the error shown.

Shutdown (SIGINT/SIGTERM, first time): capture stops reading and sends EOS (the drain is repeated until
capture has it: a stage may still be connecting); everything in flight is written; sinks are finalized;
exit 0. A signal before every stage has reported in stops at once: nothing has been read or written
yet, and stages still loading a model are terminated rather than waited for. A second signal stops at
once (sinks are still closed by the overlay stage's SIGTERM path). The ring is unlinked on every exit
path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.launch import Launcher, StageHandle
from stream.metrics import RunMetrics
from stream.stages.base import StageContext
from stream.swap import SWITCH_WAIT_S


@dataclass
class StageProc:
    ctx: StageContext
    role: str = "worker"  # as the stage declares it (stream.stages.base.Declares): source | worker | sink
    stream: str = ""  # the stream a per-stream stage serves; "" for shared stages
    policy: str = "restart-and-replay"  # restart | restart-and-replay | fatal
    restartable: bool = True
    proc: StageHandle | None = None
    started: float = 0.0
    last_seen: float | None = None
    restarts: deque = field(default_factory=deque)
    restart_at: float | None = None  # pending restart time
    needs_replay: bool = False
    exited: bool = False
    log_path: Path | None = None
    spawns: int = 0  # instances started so far
    term_at: float | None = None  # stalled: when SIGTERM was sent (SIGKILL after the grace)
    term_why: str = ""

    @property
    def name(self) -> str:
        return self.ctx.name


@dataclass
class Outcome:
    ok: bool
    frames: int
    wall_s: float
    report: dict[str, Any]
    failed_stage: str | None = None
    message: str | None = None
    interrupted: bool = False
    fatal: bool = False  # a user error reported by a stage (bad file, unwritable output)
    files: list[str] = field(default_factory=list)  # video files written (every overlay instance's)
    failed_streams: dict[str, str] = field(default_factory=dict)  # stream id -> why it ended early


@dataclass
class StreamState:
    """A stream of the run as the supervisor follows it."""

    id: str
    ring: Any = None  # its shared-memory ring (the supervisor unlinks it)
    t_go: float | None = None  # when its source was told to start
    last_go: float = 0.0
    done: dict[str, Any] | None = None  # its sink's final report
    failed: str | None = None  # why it ended early (source gone, a stage that cannot restart)
    ended_at: float | None = None  # when it was told to stop after failing
    removing: bool = False  # removed through the control API: drained, then its stages stop
    last_cmd: float = 0.0  # when it was last told to drain or stop
    written_before: int = 0  # frames written by sink instances that were restarted
    files_before: list[str] = field(default_factory=list)
    final_written: int | None = None  # a removed stream's count, kept when its stages are forgotten


class Supervisor:
    """A watchdog over declared stages: it knows each by its role (source, worker, sink), the stream it
    serves and its restart policy, never by name."""

    def __init__(
        self,
        cfg,
        stages: list[StageProc],
        run_dir: Path,
        ctl_up: str,
        ctl_down: str,
        rings: dict[str, Any] | None = None,
        on_progress: Callable[[RunMetrics, dict[str, Any]], None] | None = None,
        launcher: Launcher | None = None,
        factory: Any = None,
        control: Any = None,
    ) -> None:
        from stream import launch

        self.cfg = cfg
        self.launcher = launcher or launch.default()
        self.stages = {s.name: s for s in stages}
        self.run_dir = run_dir
        self.ctl_up_ep = ctl_up
        self.ctl_down_ep = ctl_down
        self.on_progress = on_progress
        # makes a stream's stages and ring (stream.pipeline.StreamFactory: add_stream), forgets it again
        self.factory = factory
        self.control = control  # stream.control.ControlServer, answered from this loop
        self.names: dict[str, str] = {sp.name: sp.stream for sp in stages if sp.stream}
        self.metrics = RunMetrics()
        self.info: dict[str, Any] = {}  # latest heartbeat extras by stage
        self.fatal: tuple[str, str] | None = None
        self.signals = 0
        self.drain_sent = False
        self.t_go: float | None = None  # when every stage was up and the first source was told to start
        self._last_drain = 0.0
        ids = list(dict.fromkeys(sp.stream for sp in stages if sp.stream))
        self.streams: dict[str, StreamState] = {
            sid: StreamState(sid, ring=(rings or {}).get(sid)) for sid in ids
        }
        self.multi = len(self.streams) > 1  # one stream: its failure is the run's, as it always was
        self.retired: dict[str, StreamState] = {}  # streams removed while the run went on
        # remote infer workers: progress watch and re-sends
        self._progress = (-1, 0.0)  # (frames written, when that count was first seen)
        self._resent_at = 0.0
        self._replay_at: float | None = None
        self._told_waiting = False
        # model swaps (stream.swap): the one under way, the record of each, workers being retired
        self.model = getattr(factory, "model", None)
        self.gen = 0
        self.swap: Any = None
        self.swaps: list[dict[str, Any]] = []
        self.retiring: list[StageProc] = []

    # -- the graph as declared ------------------------------------------------------------------
    def of_stream(self, sid: str, role: str | None = None) -> list[StageProc]:
        return [sp for sp in self.stages.values() if sp.stream == sid and (role is None or sp.role == role)]

    def shared(self) -> list[StageProc]:
        return [sp for sp in self.stages.values() if not sp.stream]

    def is_live(self, sid: str | None = None) -> bool:
        sid = sid if sid is not None else next(iter(self.streams), "")
        return any(
            self.info.get(sp.name, {}).get("source", {}).get("live") for sp in self.of_stream(sid, "source")
        ) or any(sp.policy != "fatal" for sp in self.of_stream(sid))

    @property
    def done(self) -> dict[str, Any] | None:
        """Every stream's sink has finished (its last report), or None."""
        live = [st for st in self.streams.values() if st.failed is None]
        if not live or any(st.done is None for st in live):
            return None
        return {"written": sum(int(st.done.get("written", 0)) for st in live)}

    # -- processes ------------------------------------------------------------------------------
    def spawn(self, sp: StageProc) -> None:
        ctx_path = self.run_dir / f"{sp.name}.json"
        sp.ctx.parent_pid = os.getpid()
        sp.ctx.instance = sp.spawns
        sp.spawns += 1
        ctx_path.write_text(sp.ctx.to_json())
        sp.log_path = self.run_dir / f"{sp.name}.log"
        sp.proc = self.launcher.start(sp.ctx.stage, ctx_path, sp.log_path)
        sp.started = time.monotonic()
        sp.last_seen = None
        sp.exited = False
        sp.restart_at = None
        sp.term_at = None

    def last_lines(self, sp: StageProc, n: int = 12) -> list[str]:
        try:
            lines = sp.log_path.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return []
        return lines[-n:]

    # -- control --------------------------------------------------------------------------------
    def broadcast(self, cmd: str, to: str | None = None, **kw: Any) -> None:
        import zmq

        try:
            self.down.send(json.dumps({"cmd": cmd, "to": to, **kw}).encode(), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def handle(self, msg: dict[str, Any]) -> None:
        name = msg.get("stage", "?")
        sp = self.stages.get(name)
        kind = msg.get("type")
        if sp is not None and sp.proc is not None and msg.get("pid") != sp.proc.pid:
            return  # a message from a previous instance that was still queued
        if sp is not None:
            sp.last_seen = time.monotonic()
        if "metrics" in msg:
            self.metrics.update(name, msg["metrics"])
        if msg.get("extra"):
            self.info[name] = msg["extra"]
        st = self.streams.get(sp.stream) if sp is not None and sp.stream else None
        if self.swap is not None and self.swap_message(name, sp, kind, msg):
            return
        if kind == "fatal":
            if st is not None and self.multi:  # one stream's trouble ends that stream only
                self.end_stream(st, msg.get("message", "failed"))
            elif self.fatal is None:
                self.fatal = (name, msg.get("message", "failed"))
        elif kind == "done" and st is not None and sp.role == "sink":
            why = msg.get("source_error")
            if why:  # the source failed: as its capture's own "fatal" would (that one may come later)
                source = next((s.name for s in self.of_stream(st.id) if s.role == "source"), name)
                if self.multi:
                    self.end_stream(st, why)
                elif self.fatal is None:
                    self.fatal = (source, why)
            st.done = msg
            if msg.get("metrics"):
                self.metrics.update(name, msg["metrics"])
        elif kind == "notice":  # something the user should see now, not in a log deleted at the end
            print(f"segstream: {msg.get('message', '')}", file=sys.stderr)
        elif kind == "peer_lost":
            self.peer_lost(msg)
        if sp is not None and sp.needs_replay and kind in ("hb", "ready"):
            sp.needs_replay = False
            self.broadcast("replay", to="role:source")

    def end_stream(self, st: StreamState, why: str) -> None:
        """A stream that cannot go on: its stages are told to stop (a sink finalizes its outputs)."""
        if st.failed is not None:
            return
        st.failed = why
        st.ended_at = time.monotonic()
        print(f"segstream: stream {st.id}: {why}; the other streams go on", file=sys.stderr)
        for sp in self.of_stream(st.id):
            self.broadcast("stop", to=sp.name)

    def on_signal(self, signum, frame) -> None:
        self.signals += 1

    def peer_lost(self, msg: dict[str, Any]) -> None:
        """A remote infer worker's connection dropped: the frames it held went with it (files: re-send)."""
        live = self.is_live()
        print(
            f"segstream: an infer worker on {msg.get('endpoint', '?')} went away "
            f"({msg.get('connected', 0)} still connected)"
            + ("" if live else "; the frames in flight will be re-sent"),
            file=sys.stderr,
        )
        if not live:  # at most one re-send a second, however many connections drop
            self._replay_at = max(time.monotonic(), self._resent_at + 1.0)

    # -- streams added and removed while the run goes on ------------------------------------------
    def add_stream(self, spec) -> None:
        """Start a stream's stages (its ring made by ``make_stream``); it starts once they report in."""
        from stream.streams import StreamError

        if self.factory is None:
            raise StreamError("this run cannot add streams")
        if spec.id in self.streams or spec.id in self.retired:
            raise StreamError(f"stream '{spec.id}': key 'id' = {spec.id!r}: a stream of this run has that id")
        if self.drain_sent:
            raise StreamError("the run is stopping")
        stages, ring = self.factory.make(spec, check=True)
        self.streams[spec.id] = StreamState(spec.id, ring=ring)
        self.multi = True
        for sp in stages:
            self.stages[sp.name] = sp
            self.names[sp.name] = sp.stream
            self.spawn(sp)
        print(f"segstream: stream {spec.id} added ({', '.join(spec.sinks)})", file=sys.stderr)

    def remove_stream(self, sid: str) -> None:
        """Drain a stream (its source stops, what is in flight is written, sinks finalized)."""
        from stream.streams import StreamError

        st = self.streams.get(sid)
        if st is None:
            raise StreamError(f"no stream '{sid}' in this run (streams: {', '.join(self.streams) or 'none'})")
        if st.removing:
            raise StreamError(f"stream '{sid}' is already being removed")
        st.removing = True
        self.multi = True
        print(f"segstream: stream {sid} removed: draining it", file=sys.stderr)

    def retire_finished(self) -> None:
        """Streams whose sink is done or that failed: stop their stages; once those exited, forget them
        (ring unlinked, shared stages told to drop it) unless the run is ending anyway."""
        for st in list(self.streams.values()):
            now = time.monotonic()
            if now - st.last_cmd < 0.5:
                continue
            if st.removing and st.done is None and st.failed is None:
                st.last_cmd = now  # repeated until the source has it (a SUB may still be joining)
                for sp in self.of_stream(st.id, "source"):
                    self.broadcast("drain", to=sp.name)
            if st.done is None and st.failed is None:
                continue
            procs = self.of_stream(st.id)
            for sp in procs:
                if sp.proc is not None and sp.proc.poll() is None:
                    st.last_cmd = now
                    self.broadcast("stop", to=sp.name)  # e.g. a source that sent its end and waits
                else:
                    sp.exited = True
            if st.removing and all(sp.exited for sp in procs):
                self.drain_messages()
                st.final_written = self.written(st)
                for sp in self.of_stream(st.id, "sink"):
                    files = self.info.get(sp.name, {}).get("files", [])
                    st.files_before += [f for f in files if f not in st.files_before]
                for sp in procs:
                    self.stages.pop(sp.name, None)
                if self.factory is not None:
                    self.factory.forget(st.id)
                if st.ring is not None:
                    self.broadcast("forget", stream=st.id, ring=st.ring.name)
                    st.ring.close()
                    st.ring = None
                self.retired[st.id] = self.streams.pop(st.id)

    def list_streams(self) -> list[dict[str, Any]]:
        """Every stream with its state and counters (the control API's ``list``)."""
        out = []
        roles = {sp.name: sp.role for sp in self.stages.values()}
        for sid, st in [*self.streams.items(), *self.retired.items()]:
            snap = {}
            for name, s in self.names.items():
                if (
                    s == sid
                    and roles.get(name, "sink") == "sink"
                    and self.metrics.stages.get(name, {}).get("latency")
                ):
                    snap = self.metrics.stages[name]
            state = (
                "failed"
                if st.failed
                else "removed"
                if sid in self.retired
                else "done"
                if st.done
                else "running"
            )
            lat = snap.get("latency")
            out.append(
                {
                    "id": sid,
                    "state": state,
                    "frames": self.written(st),
                    "drops": dict(snap.get("drops", {})),
                    **({"error": st.failed} if st.failed else {}),
                    **({"latency_ms": RunMetrics.latency_of(lat)} if lat else {}),
                }
            )
        return out

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        import zmq

        from stream.transport import CONTROL_HWM, open_socket

        zctx = zmq.Context.instance()
        self.up = open_socket(zctx, self.ctl_up_ep, hwm=CONTROL_HWM)
        self.down = open_socket(zctx, self.ctl_down_ep, hwm=CONTROL_HWM)
        old = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        t0 = time.monotonic()
        outcome: Outcome | None = None
        try:
            # the model's workers first: loading it is the longest set-up, and the source waits for it
            for sp in sorted(self.stages.values(), key=lambda sp: sp.ctx.stage != "infer"):
                self.spawn(sp)
            outcome = self.watch(t0)
        finally:
            try:
                self.stop_all()  # our handlers stay in place: a Ctrl-C here must not skip the reaping
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
            if outcome is not None:  # the exit reports carry each stage's final counters
                outcome.frames = self.frames_written()
                outcome.report = self.report(outcome.frames, outcome.wall_s)
                outcome.files = self.files_written()
                outcome.failed_streams = {
                    sid: st.failed for sid, st in [*self.streams.items(), *self.retired.items()] if st.failed
                }
            if self.control is not None:
                self.control.close()
            zctx.destroy(linger=0)
            for st in [*self.streams.values(), *self.retired.values()]:
                if st.ring is not None:
                    st.ring.close()
                    st.ring = None
        return outcome

    def stream_of(self) -> dict[str, str]:
        return dict(self.names)  # removed streams' stages included: their counters stay in the report

    def poll_api(self) -> None:
        if self.control is not None:
            self.control.poll()

    def api_handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The control API's commands (stream.control)."""
        from stream.streams import StreamError, parse

        def add(req: dict[str, Any]) -> dict[str, Any]:
            self.add_stream(parse(req.get("stream"), "add"))
            return {}

        def remove(req: dict[str, Any]) -> dict[str, Any]:
            sid = req.get("id")
            if not isinstance(sid, str):
                raise StreamError(f"remove: key 'id' = {sid!r}: must be a stream id")
            self.remove_stream(sid)
            return {"draining": True}

        def model(req: dict[str, Any]) -> Any:
            return self.start_swap(req.get("model"))

        return {
            "add": add,
            "remove": remove,
            "list": lambda req: {"streams": self.list_streams()},
            "model": model,
        }

    # -- model swap (stream.swap) ------------------------------------------------------------------
    def model_holders(self) -> list[StageProc]:
        """The shared workers that run the model (their config names one)."""
        return [sp for sp in self.shared() if sp.role == "worker" and "model" in sp.ctx.config]

    def start_swap(self, path: Any) -> Any:
        from stream.control import Pending
        from stream.swap import Swap, SwapError, check_model

        if self.factory is None or self.model is None:
            raise SwapError("this run cannot swap its model")
        if self.swap is not None:
            raise SwapError(f"a model swap to {self.swap.path} is under way")
        if self.drain_sent:
            raise SwapError("the run is stopping")
        model = check_model(self.cfg, self.model, path)
        gen = self.gen + 1
        # the overlay reads the new class table from here at the first frame of the new generation
        (self.run_dir / f"model-g{gen}.json").write_text(json.dumps(model))
        old = [sp.name for sp in self.model_holders()]
        procs = self.factory.builder.infer_stages(gen, path, model)
        self.broadcast("model_prepare", to="role:worker", gen=gen)
        self.swap = Swap(gen, path, model, [sp.name for sp in procs], old, Pending())
        for sp in procs:
            self.stages[sp.name] = sp
            self.spawn(sp)
        print(f"segstream: loading model {path} in {len(procs)} new infer worker(s)", file=sys.stderr)
        return self.swap.pending

    def swap_message(self, name: str, sp: StageProc | None, kind: str | None, msg: dict[str, Any]) -> bool:
        """A swap's own messages (True: handled). A new worker that fails to load refuses the swap, not
        the run."""
        sw = self.swap
        if name in sw.workers and kind == "fatal" and sw.phase == "warming":
            self.fail_swap(msg.get("message", "failed to load"))
            return True
        if msg.get("gen") != sw.gen:
            return False
        if kind == "model_switched" and sw.phase == "switching":
            sw.phase, sw.t_switched = "switched", time.monotonic()
            return True
        if kind == "model_swapped" and sp is not None and sp.stream:
            sw.streams[sp.stream] = {"seq": msg.get("seq"), "gap_ms": msg.get("gap_ms")}
            return True
        return False

    def fail_swap(self, why: str) -> None:
        sw = self.swap
        for name in sw.workers:
            sp = self.stages.pop(name, None)
            if sp is not None and sp.proc is not None:
                self.terminate(sp.proc)
                self.retiring.append(sp)
        self.broadcast("model_retired", to="role:worker", gen=sw.gen)
        first = str(why).strip().splitlines()[0] if str(why).strip() else "failed"
        sw.pending.answer({"ok": False, "error": f"model {sw.path}: {first}; the old model keeps running"})
        print(f"segstream: model {sw.path} refused: {first}", file=sys.stderr)
        self.swap = None

    def advance_swap(self, now: float) -> None:
        """Warm -> switch -> answer -> retire the old workers."""
        sw = self.swap
        if sw is None:
            self.reap_retiring()
            return
        new = [self.stages[n] for n in sw.workers if n in self.stages]
        if sw.phase == "warming":
            dead = [sp for sp in new if sp.proc is not None and sp.proc.poll() is not None]
            if dead:
                time.sleep(0.2)  # its fatal message (the one line) may still be in flight
                self.drain_messages()
                if self.swap is sw:
                    lines = self.last_lines(dead[0], 1)
                    code = dead[0].proc.poll()
                    self.fail_swap(lines[-1] if lines else f"the new infer worker exited with code {code}")
                return
            if now - sw.t_start > self.cfg.startup_timeout_s:
                self.fail_swap(f"not loaded within {self.cfg.startup_timeout_s:g} s")
                return
            if all(sp.last_seen is not None for sp in new):
                sw.phase, sw.t_ready = "switching", now
        if sw.phase == "switching" and now - sw.t_switch_cmd >= 0.5:
            sw.t_switch_cmd = now  # repeated until preprocess says it switched
            self.broadcast("model_switch", to="role:worker", gen=sw.gen, model=sw.model)
        if sw.phase == "switched":
            running = [sid for sid, st in self.streams.items() if st.failed is None and st.done is None]
            if not sw.replied and (
                all(sid in sw.streams for sid in running) or now - sw.t_switched > SWITCH_WAIT_S
            ):
                self.finish_swap(sw)
            self.retire_old(sw, now)

    def finish_swap(self, sw: Any) -> None:
        """The new model is the run's: answer the request, record the swap."""
        sw.replied = True
        self.gen, self.model = sw.gen, sw.model
        rec = sw.record()
        self.swaps.append(rec)
        sw.pending.answer({"ok": True, **rec})
        print(
            f"segstream: switched to model {sw.path} at seq {rec['seq']}"
            + (f" (gap {rec['gap_ms']:.0f} ms)" if rec.get("gap_ms") is not None else ""),
            file=sys.stderr,
        )

    def retire_old(self, sw: Any, now: float) -> None:
        """Stop the old workers once they answered every frame preprocess sent them (from their own
        counters), or after a stall timeout whatever they say."""
        if sw.old_sent is None and not (sw.t_switched and now - sw.t_switched > self.cfg.stall_timeout_s):
            return
        done = sum(int(self.metrics.stages.get(n, {}).get("frames_out", 0)) for n in sw.old)
        if sw.old_sent is not None and done < sw.old_sent and now - sw.t_switched < self.cfg.stall_timeout_s:
            return
        if not sw.replied:
            self.finish_swap(sw)
        for name in sw.old:
            sp = self.stages.pop(name, None)
            if sp is not None and sp.proc is not None:
                self.broadcast("stop", to=name)
                sp.term_at = now
                self.retiring.append(sp)
        self.broadcast("model_retired", to="role:worker", gen=sw.gen - 1)
        self.swap = None

    def reap_retiring(self) -> None:
        """Retired workers: told to stop; SIGTERM after the grace (their counters stay in the report)."""
        for sp in list(self.retiring):
            if sp.proc.poll() is not None:
                self.retiring.remove(sp)
            elif sp.term_at is not None and time.monotonic() - sp.term_at > self.cfg.term_grace_s:
                self.terminate(sp.proc)
                sp.term_at = None

    def watch(self, t0: float) -> Outcome:
        import zmq

        poller = zmq.Poller()
        poller.register(self.up, zmq.POLLIN)
        last_progress = 0.0
        drain_deadline = None
        while True:
            # once every sink is done only their exits are awaited: look more often than every 100 ms
            if poller.poll(100 if self.done is None else 5):
                self.drain_messages()
            now = time.monotonic()
            if self.signals and self.t_go is None:
                # not every stage is up: nothing was read yet, so there is nothing to drain or finalize
                return self.outcome(t0, ok=True, interrupted=True, message="interrupted during start-up")
            self.poll_api()
            self.advance_swap(now)
            self.maybe_go(now)
            if self.signals and not self.drain_sent:
                self.drain_sent = True
                drain_deadline = now + max(10.0, 2 * self.cfg.stall_timeout_s)
            # repeated until every source has it: PUB drops what a SUB that is still joining has not seen
            if self.drain_sent and now - self._last_drain >= 0.5:
                self._last_drain = now
                for st in self.streams.values():
                    for sp in self.of_stream(st.id, "source"):
                        if not self.info.get(sp.name, {}).get("eos") and st.failed is None:
                            self.broadcast("drain", to=sp.name)
            if self.signals >= 2 or (drain_deadline is not None and now > drain_deadline):
                return self.outcome(
                    t0, ok=True, interrupted=True, message="stopped before the drain finished"
                )
            if self.fatal is not None:
                name, message = self.fatal
                return self.outcome(t0, ok=False, failed_stage=name, message=message, fatal=True)
            if not self.streams and self.retired:  # every stream was removed: nothing left to run
                return self.outcome(t0, ok=True, interrupted=bool(self.signals))
            if self.streams and all(self.finished(st) for st in self.streams.values()):
                failed = {sid: st.failed for sid, st in self.streams.items() if st.failed}
                if failed and len(failed) == len(self.streams):  # nothing went on: the run failed
                    msg = "; ".join(f"stream {sid}: {why}" for sid, why in failed.items())
                    return self.outcome(t0, ok=False, message=msg, fatal=True)
                return self.outcome(t0, ok=True, interrupted=bool(self.signals))
            self.retire_finished()
            failed = self.check_stages(now) or self.watch_remote(now)
            if failed is not None:
                return failed
            if self.on_progress and now - last_progress >= 0.25:
                last_progress = now
                self.on_progress(self.metrics, self.info)

    def finished(self, st: StreamState) -> bool:
        """A stream is over once its sink reported done (or it failed) and its sink process exited."""
        if st.done is None and st.failed is None:
            return False
        if st.failed is not None and time.monotonic() - (st.ended_at or 0) > self.cfg.term_grace_s + 3:
            return True  # told to stop long ago: stop_all reaps what is left
        return all(sp.proc is None or sp.proc.poll() is not None for sp in self.of_stream(st.id, "sink"))

    def maybe_go(self, now: float) -> None:
        """Tell a stream's source to start once its stages and the shared ones have reported in; repeated
        every second (PUB may miss a late SUB)."""
        if any(sp.last_seen is None for sp in self.shared()):
            return
        for st in self.streams.values():
            procs = self.of_stream(st.id)
            if st.t_go is None:
                if not procs or any(sp.last_seen is None for sp in procs):
                    continue
                st.t_go = now
                if self.t_go is None:
                    self.t_go = now
            if now - st.last_go >= 1.0 and not st.removing and st.failed is None:
                st.last_go = now
                for sp in self.of_stream(st.id, "source"):
                    self.broadcast("go", to=sp.name)

    def check_stages(self, now: float) -> Outcome | None:
        for sp in list(self.stages.values()):
            st = self.streams.get(sp.stream) if sp.stream else None
            if st is not None and (st.done is not None or st.failed is not None):
                continue  # a finished stream's stages exit on their own (retire_finished)
            if self.swap is not None and self.swap.phase == "warming" and sp.name in self.swap.workers:
                continue  # a new model's worker that fails to load refuses the swap (advance_swap)
            if sp.restart_at is not None:
                if now >= sp.restart_at:
                    self.spawn(sp)
                    sp.needs_replay = sp.policy == "restart-and-replay"
                continue
            code = sp.proc.poll()
            why = None
            if sp.term_at is not None:  # stalled and told to stop: let it finalize, within the grace
                if code is None and now - sp.term_at < self.cfg.term_grace_s:
                    continue
                if code is None:
                    sp.proc.kill()
                    sp.proc.wait()
                self.drain_messages()  # its exit report (final counters)
                why, sp.term_at = sp.term_why, None
            elif code is not None:
                # a fatal message may still be in flight: give it a moment before blaming a crash
                time.sleep(0.2)
                self.drain_messages()
                if self.fatal is not None or self.done is not None:
                    return None
                if st is not None and (st.done is not None or st.failed is not None):
                    continue
                why = f"exited with code {code}"
            else:
                limit = self.cfg.startup_timeout_s if sp.last_seen is None else self.cfg.stall_timeout_s
                since = sp.started if sp.last_seen is None else sp.last_seen
                if now - since > limit:
                    # SIGTERM first: the stage's exit path closes its sinks (an mp4 gets its index)
                    sp.term_why = f"sent no heartbeat for {now - since:.1f} s"
                    sp.term_at = now
                    self.terminate(sp.proc)
                continue
            self.metrics.instance_died(sp.name)
            out = self.schedule_restart(sp, why, now)
            if out is not None:
                return out
        return None

    @staticmethod
    def terminate(proc: StageHandle) -> None:
        """SIGTERM, and SIGCONT so that a stopped process runs its handler now rather than never."""
        try:
            proc.terminate()
            proc.send_signal(signal.SIGCONT)  # checks that the pid is still this stage's
        except (ProcessLookupError, OSError):
            pass

    def watch_remote(self, now: float) -> Outcome | None:
        """Remote infer workers (one-stream runs): re-send what a vanished worker held; never wait for
        results forever."""
        if not self.cfg.remote_infer or self.t_go is None or self.signals or len(self.streams) != 1:
            return None
        sid = next(iter(self.streams))
        live = self.is_live(sid)
        if self._replay_at is not None and now >= self._replay_at:
            self._replay_at = None
            self._resent_at = now
            self.broadcast("replay", to="role:source")
        written = self.written(self.streams[sid])
        in_flight = sum(
            int(self.metrics.stages.get(sp.name, {}).get("queue_depth", 0))
            for sp in self.of_stream(sid, "source")
        )
        remote = {}
        for sp in self.shared():
            remote = self.info.get(sp.name, {}).get("remote") or remote
        endpoint = remote.get("endpoint", self.cfg.remote_infer[0])
        if remote.get("connected"):
            self._told_waiting = False
        if written != self._progress[0] or in_flight == 0:
            self._progress = (written, now)
            return None
        idle = now - self._progress[1]
        if not self._told_waiting and not remote.get("connected") and self.cfg.workers == 0 and idle > 2.0:
            self._told_waiting = True  # once per wait: frames are queued and nobody takes them
            print(
                f"segstream: waiting for an infer worker to connect to {endpoint} (segstream worker infer "
                f"--in ... --out ...); the run ends after {self.cfg.remote_timeout_s:g} s without one",
                file=sys.stderr,
            )
        if idle >= self.cfg.remote_timeout_s:
            return self.outcome(
                time.monotonic(),
                ok=False,
                message=(
                    f"no result from any infer worker for {idle:.0f} s with {in_flight} frames in flight "
                    f"({remote.get('connected', 0)} worker(s) connected to {endpoint}); "
                    "start `segstream worker infer` or raise --remote-timeout"
                ),
            )
        if not live and now - max(self._resent_at, self._progress[1]) >= self.cfg.stall_timeout_s:
            # a worker that hangs keeps its connection: what it holds comes back only this way
            print(
                f"segstream: no result for {idle:.0f} s with {in_flight} frames in flight; re-sending them",
                file=sys.stderr,
            )
            self._resent_at = now
            self.broadcast("replay", to="role:source")
        return None

    def drain_messages(self) -> None:
        import zmq

        while True:
            try:
                raw = self.up.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.handle(json.loads(raw))
            except ValueError:
                pass

    def schedule_restart(self, sp: StageProc, why: str, now: float) -> Outcome | None:
        while sp.restarts and now - sp.restarts[0] > self.cfg.restart_window_s:
            sp.restarts.popleft()
        if sp.policy == "fatal":
            sp.restartable = False  # e.g. a file source cannot resume mid-file into a finished mp4
        if not sp.restartable or len(sp.restarts) >= self.cfg.restart_budget:
            reason = (
                "cannot be restarted for this source"
                if not sp.restartable
                else (
                    f"restart budget spent ({len(sp.restarts)} restarts in {self.cfg.restart_window_s:g} s)"
                )
            )
            st = self.streams.get(sp.stream) if sp.stream else None
            if st is not None and self.multi:  # a stream's own stage: that stream ends, the run goes on
                self.end_stream(st, f"stage {sp.name} {why}; {reason}")
                return None
            return self.outcome(time.monotonic(), ok=False, failed_stage=sp.name, message=f"{why}; {reason}")
        sp.restarts.append(now)
        self.metrics.restarts[sp.name] = self.metrics.restarts.get(sp.name, 0) + 1
        prev = self.info.pop(sp.name, {}) if sp.role == "sink" else self.info.get(sp.name, {})
        st = self.streams.get(sp.stream)
        if sp.role == "sink" and st is not None:  # what this instance wrote stays written (its own segment)
            st.written_before += int(prev.get("written", 0))
            st.files_before += [f for f in prev.get("files", []) if f not in st.files_before]
        delay = self.cfg.backoff_s * 2 ** (len(sp.restarts) - 1)
        print(f"segstream: stage {sp.name} {why}; restarting in {delay:.1f} s", file=sys.stderr)
        sp.restart_at = now + delay
        # a stage that numbers what it sends says where a new instance must continue (a live source:
        # past every seq the old one may have had in flight; the sink skips the gap)
        sp.ctx.seq_start = int(prev.get("resume_seq", sp.ctx.seq_start))
        return None

    def written(self, st: StreamState) -> int:
        if st.final_written is not None:
            return st.final_written
        sinks = self.of_stream(st.id, "sink")
        now = sum(int(self.info.get(sp.name, {}).get("written", 0)) for sp in sinks)
        if st.done is not None:
            now = int(st.done.get("written", now))
        return st.written_before + now

    def files_written(self) -> list[str]:
        files: list[str] = []
        for st in [*self.streams.values(), *self.retired.values()]:
            files += [f for f in st.files_before if f not in files]
            for sp in self.of_stream(st.id, "sink"):
                files += [f for f in self.info.get(sp.name, {}).get("files", []) if f not in files]
        return files

    def frames_written(self) -> int:
        return sum(self.written(st) for st in [*self.streams.values(), *self.retired.values()])

    def outcome(self, t0: float, ok: bool, **kw: Any) -> Outcome:
        frames = self.frames_written()
        # throughput counts from "go" (all stages up, model loaded), not from process start
        wall = time.monotonic() - (self.t_go if self.t_go is not None else t0)
        return Outcome(ok=ok, frames=frames, wall_s=wall, report=self.report(frames, wall), **kw)

    def report(self, frames: int, wall: float) -> dict[str, Any]:
        rep = self.metrics.report(frames, wall, self.stream_of())
        if self.swaps:
            rep["swaps"] = list(self.swaps)
        return rep

    def stop_all(self) -> None:
        """stop -> wait -> SIGTERM -> grace -> SIGKILL; every child is reaped. A stage that never reported
        in is not listening yet (loading a model) and holds no output: it gets SIGTERM at once."""
        live = [sp for sp in [*self.stages.values(), *self.retiring] if sp.proc is not None]
        procs = [sp.proc for sp in live]
        for sp in live:
            if sp.last_seen is None and sp.proc.poll() is None:
                self.terminate(sp.proc)
        self._wait(procs, 3.0, stop=True, until_signals=2)  # a second Ctrl-C: SIGTERM now
        for p in procs:
            if p.poll() is None:
                self.terminate(p)
        self._wait(procs, self.cfg.term_grace_s, until_signals=3)  # a third: SIGKILL now
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.drain_exit_reports()

    def drain_exit_reports(self) -> None:
        try:
            self.drain_messages()
        except Exception:  # noqa: BLE001
            pass

    def _wait(
        self, procs: list[StageHandle], timeout: float, stop: bool = False, until_signals: int = 0
    ) -> None:
        """Until every process exited, ``timeout`` passed or ``until_signals`` signals came; with ``stop``,
        the stop command is repeated (a stage whose control socket is still joining would miss one)."""
        end = time.monotonic() + timeout
        last = 0.0
        while any(p.poll() is None for p in procs) and time.monotonic() < end:
            if until_signals and self.signals >= until_signals:
                return
            if stop and time.monotonic() - last >= 0.5:
                last = time.monotonic()
                try:
                    self.broadcast("stop")
                except Exception:  # noqa: BLE001 - the socket may be gone already
                    pass
            time.sleep(0.005)  # stages exit within milliseconds of "stop": a coarse sleep is all wait

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
