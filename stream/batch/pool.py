"""The Ray side of `segstream batch`: a pool of actors that each load the model once and segment files.

Scheduling is by hand rather than with ``ray.util.ActorPool`` because an actor that dies (killed, out of
memory, node lost) must be replaced and its file retried on another actor, which ActorPool does not do.
The driver polls each busy actor's frame counter (actors run two threads: the file and the counter), so
one progress bar can count frames across the cluster.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import SegstreamError
from stream.batch.jobs import Job

Event = Callable[[str, dict], None]


class BatchError(SegstreamError):
    """The batch cannot run at all: Ray missing or unreachable, the model unusable."""


@dataclass
class PoolOptions:
    model: str
    actors: int | None = None  # None: from the cluster's resources
    threads: int | None = None  # inference threads per actor (None: 1 per actor on CPUs)
    device: str = "auto"
    max_frames: int | None = None
    opacity: float = 0.5
    legend: bool = False
    retries: int = 2  # a file whose actor died is tried this many more times
    extra: dict[str, Any] = field(default_factory=dict)


def import_ray():
    try:
        import ray
    except ImportError:
        raise BatchError("segstream batch needs Ray: pip install 'segstream[ray]'") from None
    return ray


def connect(address: str | None, cpus: int | None = None) -> dict:
    """Join the cluster at ``address`` or start a local one with this machine's cores; its resources."""
    import logging

    ray = import_ray()
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                from stream import cpus as cpu_budget

                ray.init(
                    num_cpus=cpus or cpu_budget.usable_cores(),
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    # results are small JSON documents: the object store needs little of /dev/shm
                    object_store_memory=128 * 1024 * 1024,
                )
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise BatchError(
                f"cannot start or reach {where}: {str(e).strip().splitlines()[0][:200]}"
            ) from None
    return dict(ray.cluster_resources())


def plan_actors(resources: dict, opts: PoolOptions) -> tuple[int, dict]:
    """(actor count, per-actor Ray resources): one actor per GPU where the cluster has GPUs, else one per
    ``threads`` CPUs; ``--actors`` overrides the count."""
    gpus = int(resources.get("GPU", 0))
    threads = opts.threads or 1
    if gpus and opts.device in ("auto", "cuda") or opts.device.startswith("cuda"):
        count = opts.actors or max(1, gpus)
        return count, {"num_gpus": 1, "num_cpus": threads}
    count = opts.actors or max(1, int(resources.get("CPU", 1)) // threads)
    return count, {"num_cpus": threads}


def _actor_class(ray):
    @ray.remote(max_concurrency=2, max_restarts=0, max_task_retries=0)
    class SegmentActor:
        """Holds one loaded model; segments one file at a time; reports its frame counter on request."""

        def __init__(self, model: str, device: str, threads: int | None) -> None:
            from engines.runtime import backend_for, load

            extra = {"spin": False} if backend_for(model) == "onnxruntime" else {}
            self.runtime = load(model, device=device, threads=threads, **extra)
            self.frames = 0
            self.current: str | None = None

        def info(self) -> dict:
            ctx = ray.get_runtime_context()
            return {
                "pid": os.getpid(),
                "node": ctx.get_node_id(),
                "backend": self.runtime.backend,
                "device": self.runtime.device,
            }

        def progress(self) -> tuple[str | None, int]:
            return self.current, self.frames

        def segment(self, job: dict, out: str, opts: dict) -> dict:
            from stream.batch.segment import BatchFileError, segment_file

            self.current, self.frames = job["name"], 0

            def count(n: int) -> None:
                self.frames = n

            try:
                stats = segment_file(
                    Job(**job), Path(out), self.runtime, on_frames=count, worker=self.info(), **opts
                )
                return {"status": "done", "stats": stats}
            except BatchFileError as e:
                return {"status": "failed", "error": str(e)}
            finally:
                self.current = None

    return SegmentActor


class Pool:
    """``run(jobs)`` -> one result dict per job: status done | failed, stats or error, attempts."""

    def __init__(self, opts: PoolOptions, resources: dict, on_event: Event | None = None) -> None:
        self.ray = import_ray()
        self.opts = opts
        self.emit = on_event or (lambda kind, data: None)
        self.count, self.resources = plan_actors(resources, opts)
        self.cls = _actor_class(self.ray).options(**self.resources)
        self.infos: dict[Any, dict] = {}

    def _new_actor(self):
        # one inference thread per actor unless told: ONNX Runtime's default (a thread per core) per actor
        # oversubscribes the cores the actors were planned on
        actor = self.cls.remote(self.opts.model, self.opts.device, self.opts.threads or 1)
        try:
            info = self.ray.get(actor.info.remote())
        except self.ray.exceptions.RayActorError as e:
            # the constructor raised (a model the runtime refuses) or the process could not start
            cause = getattr(e, "cause", None) or e
            msg = str(cause).strip().splitlines()
            raise BatchError(f"an actor could not load {self.opts.model}: {msg[-1] if msg else e}") from None
        self.infos[actor] = info
        self.emit("actor", info)
        return actor

    def run(self, jobs: list[Job], out: Path) -> dict[str, dict]:
        ray = self.ray
        seg_opts = {
            "max_frames": self.opts.max_frames,
            "opacity": self.opts.opacity,
            "legend": self.opts.legend,
        }
        results: dict[str, dict] = {}
        attempts: dict[str, int] = {}
        pending = deque(jobs)
        idle = [self._new_actor() for _ in range(min(self.count, len(jobs)))]
        running: dict[Any, tuple[Any, Job]] = {}
        frames_by_job: dict[str, int] = {}
        last_poll = 0.0
        try:
            while pending or running:
                while idle and pending:
                    actor, job = idle.pop(), pending.popleft()
                    attempts[job.name] = attempts.get(job.name, 0) + 1
                    ref = actor.segment.remote(job.to_dict(), str(out), seg_opts)
                    running[ref] = (actor, job)
                    self.emit("start", {"job": job.name, "attempt": attempts[job.name], **self.infos[actor]})
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
                for ref in ready:
                    actor, job = running.pop(ref)
                    try:
                        res = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        # the actor's process died mid-file: replace it, hand the file to another actor
                        dead = self.infos.pop(actor, {})
                        self.emit("actor_died", {"job": job.name, **dead})
                        frames_by_job[job.name] = 0
                        if attempts[job.name] <= self.opts.retries:
                            pending.appendleft(job)
                        else:
                            res = {"status": "failed", "error": f"its worker died {attempts[job.name]} times"}
                            results[job.name] = {**res, "attempts": attempts[job.name], "source": job.source}
                            self.emit("done", {"job": job.name, **res})
                        idle.append(self._new_actor())
                        continue
                    except ray.exceptions.RayTaskError as e:  # a bug, not the file: report, keep going
                        lines = str(e).strip().splitlines()
                        res = {"status": "failed", "error": f"internal error: {lines[-1] if lines else e}"}
                    idle.append(actor)
                    results[job.name] = {**res, "attempts": attempts[job.name], "source": job.source}
                    frames_by_job[job.name] = res.get("stats", {}).get("frames", 0)
                    self.emit("done", {"job": job.name, **res})
                if running and time.monotonic() - last_poll > 0.5:
                    last_poll = time.monotonic()
                    self._poll(running, frames_by_job)
        finally:
            for actor in list(self.infos):
                ray.kill(actor)
        return results

    def _poll(self, running: dict, frames_by_job: dict[str, int]) -> None:
        """Frames done so far on every busy actor -> one 'frames' event with the batch's total."""
        ray = self.ray
        refs = {actor.progress.remote(): job.name for actor, job in running.values()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.2)
        for ref in ready:
            try:
                name, n = ray.get(ref)
            except ray.exceptions.RayError:
                continue  # that actor is dying; its file is handled when its task returns
            if name is not None:
                frames_by_job[name] = n
        self.emit("frames", {"total": sum(frames_by_job.values())})
