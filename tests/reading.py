"""Reading a Source in tests, unit and integration alike: everything up to its end, or the first N good
frames within a time limit (what a network source gives while its server comes and goes)."""

from __future__ import annotations

import time

from stream.sources.base import Frame, ReadStatus, Source


def read_all(src: Source, limit: int = 100_000, timeout: float = 5.0) -> list[Frame]:
    """Every Frame up to and including EOS; fails if LIMIT reads (each waiting up to TIMEOUT s) bring none."""
    frames = []
    for _ in range(limit):
        f = src.read(timeout=timeout)
        frames.append(f)
        if f.status is ReadStatus.EOS:
            return frames
    raise AssertionError(f"no EOS within {limit} reads")


def read_ok(src: Source, n: int, within_s: float, read_timeout: float = 1.0) -> list[Frame]:
    """Up to N frames read OK within WITHIN_S seconds (fewer if time runs out); other reads are skipped."""
    frames, end = [], time.monotonic() + within_s
    while len(frames) < n and time.monotonic() < end:
        f = src.read(timeout=read_timeout)
        if f.status is ReadStatus.OK:
            frames.append(f)
    return frames
