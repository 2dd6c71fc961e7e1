"""How many processors a run may use, and how inference shares them with the other stages.

Measured on the 2-core development machine (bundled model, 480x360, ONNX Runtime, no spinning): one
inference thread costs ≈ 14 ms of CPU per frame, two threads in one session ≈ 16.5 ms (the pool's wake-ups
and joins), batches of 2-4 no less per frame. Frames are independent, so the cheapest way to put every core
to work on a file is one single-threaded infer *process* per core: nothing is pinned, no thread spins, and
the scheduler hands inference whatever decode, resize, blend and encode leave free, frame by frame. That is
the budget adapting to the load: a core busy with another stage (or another program) simply runs
inference less. A live source wants the shortest path for each frame instead: one worker with a thread per
core. The count of cores is what this process may really use: its affinity mask and, in a container, the
cgroup CPU quota (a 2-CPU quota on a 64-core host is 2 cores, not 64).

With an explicit ``--threads`` that leaves at least one core over, infer workers get cores of their own
(``plan``) and the other stages share the rest.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_WORKERS = 4  # past this the single decode and encode processes, not inference, set the pace


def available() -> list[int]:
    """Processors this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cgroup_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max`` v2, ``cfs_quota_us`` v1); None if
    unlimited or unknown."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(cpus: list[int] | None = None, quota: float | None = -1.0) -> int:
    """Cores a run can keep busy: the affinity mask, capped by the cgroup quota (rounded up: a 1.5-CPU
    quota still runs two threads usefully)."""
    n = len(available() if cpus is None else cpus)
    q = cgroup_quota() if quota == -1.0 else quota
    if q is not None and q > 0:
        n = min(n, max(1, math.ceil(q)))
    return max(1, n)


@dataclass(frozen=True)
class Budget:
    workers: int  # local infer processes
    threads: int | None  # inference threads per worker (None: the backend's own default)


def budget(
    live: bool,
    workers: int | None = None,
    threads: int | None = None,
    cores: int | None = None,
) -> Budget:
    """Infer workers and threads per worker for a run; what the user set is kept, the rest is filled in.

    Files (throughput): one single-threaded worker per core, at most MAX_FILE_WORKERS workers (more cores
    go to threads). Live (latency): one worker, a thread per core. An explicit worker count splits the
    cores among those workers; explicit threads alone keep one worker.
    """
    n = usable_cores() if cores is None else max(1, cores)
    if workers is None and threads is None:
        if live:
            return Budget(1, n)
        workers = min(n, MAX_FILE_WORKERS)
        return Budget(workers, max(1, n // workers))
    if workers is None:
        return Budget(1, threads)
    if threads is None:
        threads = max(1, n // max(1, workers))
    return Budget(workers, threads)


def plan(threads: int | None, workers: int, cpus: list[int] | None = None) -> dict[str, list[int]] | None:
    """{"infer-1": [...], ..., "other": [...]} or None when pinning would not leave a core for the rest."""
    cpus = available() if cpus is None else cpus
    if not threads or workers < 1:
        return None
    need = threads * workers
    if need >= len(cpus):
        return None
    other, reserved = cpus[: len(cpus) - need], cpus[len(cpus) - need :]
    out = {f"infer-{i + 1}": reserved[i * threads : (i + 1) * threads] for i in range(workers)}
    out["other"] = other
    return out


def pin(cores: list[int] | None) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let this process reuse the memory of freed per-frame arrays instead of returning it to the OS.

    A 960x540 frame makes a 2 MB model input every frame; glibc serves blocks that large with a fresh
    mmap, and the kernel zeroes each of its pages on first touch. Measured in the preprocess stage: ≈ 920
    page faults and 1.8 ms of CPU per frame, more than the resize itself. Raising the mmap and trim
    thresholds keeps such blocks in the heap, where the next frame's array reuses them. glibc only (a
    no-op elsewhere); returns whether it applied.
    """
    import ctypes

    try:
        # the process's own symbols, libc's among them: find_library("c") would run ldconfig in a child
        # process of every stage at start-up
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    return bool(ok) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def helper_threads(cores: int | None = None) -> int:
    """OpenCV threads for the resize/convert/blend stages: one on a small machine, where every core is
    already busy with a stage and a second thread only waits for a preempted partner (measured on 2 cores
    under load: a 960x540 blob took 2.2 ms of wall time with two threads, 0.85 ms with one); otherwise 2."""
    n = usable_cores() if cores is None else cores
    return 1 if n <= 4 else 2
