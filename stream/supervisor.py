"""Start every stage process, watch heartbeats, restart with backoff, shut down cleanly.

Stages are ``python -m stream worker STAGE --context FILE`` subprocesses; their output goes to one
log file each, whose last lines are printed when the supervisor gives up on a stage.

Restart policy: a stage that exits unexpectedly or sends no heartbeat for ``stall_timeout_s`` is
killed and restarted after ``backoff_s * 2**(n-1)``; more than ``restart_budget`` restarts within
``restart_window_s`` and the run fails (non-zero exit, stage named, its last log lines shown).

Frames in flight when a stage dies (file sources): capture still holds their slots (no ack came
back), so once the new instance is up the supervisor tells capture to ``replay`` them; the overlay
stage drops duplicates. No frame is lost and the output keeps exactly one frame per input frame.
Live sources do not replay (stale frames are worthless): the overlay skips the gap and counts it.
Capture and overlay own the source and the sinks; for file sources they are not restartable (the
mp4 cannot be resumed) and their crash ends the run with the error shown.

Shutdown (SIGINT/SIGTERM, first time): capture stops reading and sends EOS; everything in flight is
written; sinks are finalized; exit 0. A second signal stops at once (sinks are still closed by
the overlay stage's SIGTERM path). The ring is unlinked on every exit path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.metrics import RunMetrics
from stream.stages.base import StageContext


@dataclass
class StageProc:
    ctx: StageContext
    restartable: bool = True
    proc: subprocess.Popen | None = None
    started: float = 0.0
    last_seen: float | None = None
    restarts: deque = field(default_factory=deque)
    restart_at: float | None = None  # pending restart time
    needs_replay: bool = False
    exited: bool = False
    log_path: Path | None = None

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


class Supervisor:
    def __init__(
        self,
        cfg,
        stages: list[StageProc],
        run_dir: Path,
        ctl_up: str,
        ctl_down: str,
        ring=None,
        on_progress: Callable[[RunMetrics, dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.stages = {s.name: s for s in stages}
        self.run_dir = run_dir
        self.ctl_up_ep = ctl_up
        self.ctl_down_ep = ctl_down
        self.ring = ring
        self.on_progress = on_progress
        self.metrics = RunMetrics()
        self.info: dict[str, Any] = {}  # latest heartbeat extras by stage
        self.fatal: tuple[str, str] | None = None
        self.done: dict[str, Any] | None = None
        self.signals = 0
        self.drain_sent = False
        self.t_go: float | None = None  # when every stage was up and capture was told to start
        self._last_go = 0.0

    # -- processes ------------------------------------------------------------------------------
    def spawn(self, sp: StageProc) -> None:
        ctx_path = self.run_dir / f"{sp.name}.json"
        sp.ctx.parent_pid = os.getpid()
        ctx_path.write_text(sp.ctx.to_json())
        sp.log_path = self.run_dir / f"{sp.name}.log"
        log = open(sp.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the child must import this very package, installed or not
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        sp.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker", sp.ctx.stage, "--context", str(ctx_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=os.getcwd(),
        )
        log.close()
        sp.started = time.monotonic()
        sp.last_seen = None
        sp.exited = False
        sp.restart_at = None

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
        if kind == "fatal" and self.fatal is None:
            self.fatal = (name, msg.get("message", "failed"))
        elif kind == "done":
            self.done = msg
        if sp is not None and sp.needs_replay and kind in ("hb", "ready"):
            sp.needs_replay = False
            self.broadcast("replay", to="capture")

    def on_signal(self, signum, frame) -> None:
        self.signals += 1

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
            for sp in self.stages.values():
                self.spawn(sp)
            outcome = self.watch(t0)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.stop_all()
            if outcome is not None:  # the exit reports carry each stage's final counters
                outcome.report = self.metrics.report(outcome.frames, outcome.wall_s)
            zctx.destroy(linger=0)
            if self.ring is not None:
                self.ring.close()
        return outcome

    def watch(self, t0: float) -> Outcome:
        import zmq

        poller = zmq.Poller()
        poller.register(self.up, zmq.POLLIN)
        last_progress = 0.0
        drain_deadline = None
        while True:
            if poller.poll(100):
                while True:
                    try:
                        raw = self.up.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self.handle(json.loads(raw))
                    except ValueError:
                        pass
            now = time.monotonic()
            self.maybe_go(now)
            if self.signals and not self.drain_sent:
                self.drain_sent = True
                self.broadcast("drain", to="capture")
                drain_deadline = now + max(10.0, 2 * self.cfg.stall_timeout_s)
            if self.signals >= 2 or (drain_deadline is not None and now > drain_deadline):
                return self.outcome(
                    t0, ok=True, interrupted=True, message="stopped before the drain finished"
                )
            if self.fatal is not None:
                name, message = self.fatal
                return self.outcome(t0, ok=False, failed_stage=name, message=message, fatal=True)
            overlay = self.stages.get("overlay")
            if self.done is not None and (overlay is None or overlay.proc.poll() is not None):
                return self.outcome(t0, ok=True, interrupted=bool(self.signals))
            if self.done is not None:
                continue  # overlay finished its sinks and is exiting
            failed = self.check_stages(now)
            if failed is not None:
                return failed
            if self.on_progress and now - last_progress >= 0.25:
                last_progress = now
                self.on_progress(self.metrics, self.info)

    def maybe_go(self, now: float) -> None:
        """Tell capture to start once every stage has reported in; repeat it (PUB may miss a late SUB)."""
        if self.t_go is None:
            if all(sp.last_seen is not None for sp in self.stages.values()):
                self.t_go = now
            else:
                return
        if now - self._last_go >= 1.0:
            self._last_go = now
            self.broadcast("go", to="capture")

    def check_stages(self, now: float) -> Outcome | None:
        for sp in self.stages.values():
            if sp.restart_at is not None:
                if now >= sp.restart_at:
                    self.spawn(sp)
                    sp.needs_replay = True
                continue
            code = sp.proc.poll()
            why = None
            if code is not None:
                # a fatal message may still be in flight: give it a moment before blaming a crash
                time.sleep(0.2)
                self.drain_messages()
                if self.fatal is not None or self.done is not None:
                    return None
                why = f"exited with code {code}"
            else:
                limit = self.cfg.startup_timeout_s if sp.last_seen is None else self.cfg.stall_timeout_s
                since = sp.started if sp.last_seen is None else sp.last_seen
                if now - since > limit:
                    why = f"sent no heartbeat for {now - since:.1f} s"
                    sp.proc.kill()
                    sp.proc.wait()
            if why is None:
                continue
            self.metrics.instance_died(sp.name)
            out = self.schedule_restart(sp, why, now)
            if out is not None:
                return out
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
        live = bool(self.info.get("capture", {}).get("source", {}).get("live"))
        if sp.ctx.stage in ("capture", "overlay") and not live:
            sp.restartable = False  # a file source cannot resume mid-file into a finished mp4
        if not sp.restartable or len(sp.restarts) >= self.cfg.restart_budget:
            reason = (
                "cannot be restarted for this source"
                if not sp.restartable
                else (
                    f"restart budget spent ({len(sp.restarts)} restarts in {self.cfg.restart_window_s:g} s)"
                )
            )
            return self.outcome(time.monotonic(), ok=False, failed_stage=sp.name, message=f"{why}; {reason}")
        sp.restarts.append(now)
        self.metrics.restarts[sp.name] = self.metrics.restarts.get(sp.name, 0) + 1
        delay = self.cfg.backoff_s * 2 ** (len(sp.restarts) - 1)
        print(f"segstream: stage {sp.name} {why}; restarting in {delay:.1f} s", file=sys.stderr)
        sp.restart_at = now + delay
        if sp.ctx.stage == "capture":  # continue the seq numbers; the overlay skips the gap
            sp.ctx.seq_start = int(self.info.get("capture", {}).get("sent", 0)) + self.cfg.slots + 1
        return None

    def outcome(self, t0: float, ok: bool, **kw: Any) -> Outcome:
        ov = self.info.get("overlay", {})
        frames = int((self.done or {}).get("written", ov.get("written", 0)))
        if self.done and self.done.get("metrics"):
            self.metrics.update("overlay", self.done["metrics"])
        # throughput counts from "go" (all stages up, model loaded), not from process start
        wall = time.monotonic() - (self.t_go if self.t_go is not None else t0)
        return Outcome(ok=ok, frames=frames, wall_s=wall, report=self.metrics.report(frames, wall), **kw)

    def stop_all(self) -> None:
        """stop -> wait -> SIGTERM -> wait -> SIGKILL; every child is reaped."""
        procs = [sp.proc for sp in self.stages.values() if sp.proc is not None]
        try:
            self.broadcast("stop")
        except Exception:  # noqa: BLE001 - the socket may be gone already
            pass
        self._wait(procs, 3.0)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        self._wait(procs, 3.0)
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

    @staticmethod
    def _wait(procs: list[subprocess.Popen], timeout: float) -> None:
        end = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
