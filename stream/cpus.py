"""Which processors each stage may use.

On a small machine the inference stage and the frame-moving stages (decode, resize, blend, encode) compete
for the same cores, and every time the scheduler puts an encoder thread on the core that was running
inference, inference slows down. When the inference thread budget is known (``--threads``) and leaves at
least one core over, each infer worker gets cores of its own and the other stages share the rest.
Without ``--threads`` (the backend uses every core) nothing is pinned.
"""

from __future__ import annotations

import os


def available() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


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


def default_threads(live: bool, cpus: list[int] | None = None) -> int | None:
    """Inference threads when the user gave none. Files want throughput: half the cores (at most 4) for
    inference, pinned, the rest for decode/blend/encode. Live sources want latency: every core (None lets
    the backend decide), since a paced source leaves the other stages idle most of the time."""
    if live:
        return None
    n = len(available() if cpus is None else cpus)
    return max(1, min(4, n // 2)) if n >= 2 else None


def pin(cores: list[int] | None) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
