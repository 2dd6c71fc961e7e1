"""Per-stage counters and the end-to-end latency histogram, as JSON-ready snapshots.

Each stage keeps one ``StageMetrics`` and sends ``snapshot()`` with its heartbeat; the supervisor
merges them (``RunMetrics``) for the progress line and ``--stats-json``. Latency uses fixed
log-spaced buckets (about 2% wide) so percentiles cost O(buckets) and memory stays flat over hours.

Two latencies: ``latency`` runs from the moment a frame was received on this host (capture), ``glass``
from the moment the camera itself captured it, by the camera's clock (RTSP sender reports): the
glass-to-output latency, network and the camera's encoder included. The capture stage's ``source``
(reconnects, outages, outage seconds of a live stream) becomes the report's ``streams`` section.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

# 0.05 ms .. ~200 s in 2%-wide buckets
_LO = 5e-5
_RATIO = 1.02
_NB = int(math.log(4000.0 / _LO, _RATIO)) + 2


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = [0] * _NB
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        s = max(seconds, 0.0)
        i = 0 if s <= _LO else min(_NB - 1, int(math.log(s / _LO, _RATIO)) + 1)
        self.counts[i] += 1
        self.n += 1
        self.total += s
        self.max = max(self.max, s)

    def percentile(self, p: float) -> float:
        """Upper edge of the bucket holding the p-th percentile (seconds); 0 when empty."""
        if not self.n:
            return 0.0
        rank = max(1, math.ceil(self.n * p / 100.0))
        acc = 0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= rank:
                return min(self.max, _LO * _RATIO**i)
        return self.max

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def summary_ms(self) -> dict[str, float]:
        return {
            "count": self.n,
            "mean": round(1e3 * self.total / self.n, 3) if self.n else 0.0,
            "p50": round(1e3 * self.percentile(50), 3),
            "p95": round(1e3 * self.percentile(95), 3),
            "p99": round(1e3 * self.percentile(99), 3),
            "max": round(1e3 * self.max, 3),
        }

    def to_sparse(self) -> dict[str, Any]:
        return {"b": {str(i): c for i, c in enumerate(self.counts) if c}, "t": self.total, "m": self.max}

    @classmethod
    def from_sparse(cls, d: dict[str, Any]) -> LatencyHistogram:
        h = cls()
        for i, c in d.get("b", {}).items():
            h.counts[int(i)] = int(c)
        h.n = sum(h.counts)
        h.total = float(d.get("t", 0.0))
        h.max = float(d.get("m", 0.0))
        return h


@dataclass
class StageMetrics:
    stage: str
    frames_in: int = 0
    frames_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0  # stage-specific: slots in flight, reorder buffer, batch waiting
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # overlay: capture -> output
    glass: LatencyHistogram = field(default_factory=LatencyHistogram)  # overlay: camera clock -> output
    source: dict[str, Any] | None = None  # capture, live sources: the stream's link counters
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    busy_s: float = 0.0
    first_at: float | None = None  # first frame handled: fps and busy % count from here, not start-up

    def drop(self, cause: str, n: int = 1) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + n

    def busy(self) -> _Busy:
        """``with metrics.busy(): work()`` accumulates busy time (for busy %)."""
        return _Busy(self)

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - (self.first_at or self.started), 1e-9)
        return {
            "stage": self.stage,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "fps": round(self.frames_out / elapsed, 2),
            "busy_pct": round(100.0 * self.busy_s / elapsed, 1),
            "queue_depth": self.queue_depth,
            "drops": dict(self.drops),
            "elapsed_s": round(elapsed, 3),
            "latency": self.latency.to_sparse() if self.latency.n else None,
            **({"glass": self.glass.to_sparse()} if self.glass.n else {}),
            **({"source": dict(self.source)} if self.source else {}),
            **({"extra": self.extra} if self.extra else {}),
        }


class _Busy:
    def __init__(self, m: StageMetrics) -> None:
        self.m = m

    def __enter__(self) -> None:
        self.t = time.perf_counter()
        if self.m.first_at is None:
            self.m.first_at = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.m.busy_s += time.perf_counter() - self.t


class RunMetrics:
    """The supervisor's merged view: the latest snapshot of every stage instance."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.restarts: dict[str, int] = {}
        self.carried: dict[str, dict[str, Any]] = {}  # counters of instances that died (restarts)

    def update(self, name: str, snap: dict[str, Any]) -> None:
        self.stages[name] = snap

    def instance_died(self, name: str) -> None:
        """Keep a dead instance's counters so totals survive its restart."""
        snap = self.stages.pop(name, None)
        if snap:
            c = self.carried.setdefault(name, {"frames_in": 0, "frames_out": 0, "drops": {}})
            c["frames_in"] += snap["frames_in"]
            c["frames_out"] += snap["frames_out"]
            for k, v in snap["drops"].items():
                c["drops"][k] = c["drops"].get(k, 0) + v
            if snap.get("source"):  # a restarted capture opens the stream anew: its counters add up
                old = c.setdefault("source", {})
                for k in ("reconnects", "outages", "outage_s"):
                    old[k] = old.get(k, 0) + snap["source"].get(k, 0)

    def streams(self) -> dict[str, dict[str, Any]]:
        """Per stream: the source's URI (password redacted) and its reconnects, outages, seconds of
        outage (an outage in progress included), and whether it is down now."""
        out: dict[str, dict[str, Any]] = {}
        names = {n for n, s in self.stages.items() if s.get("source")} | {
            n for n, c in self.carried.items() if c.get("source")
        }
        for name in sorted(names):
            cur = dict(self.stages.get(name, {}).get("source") or {})
            before = self.carried.get(name, {}).get("source", {})
            for k in ("reconnects", "outages", "outage_s"):
                cur[k] = cur.get(k, 0) + before.get(k, 0)
            cur["outage_s"] = round(cur["outage_s"], 3)
            out[str(cur.pop("stream", "0"))] = cur
        return out

    def glass(self) -> LatencyHistogram:
        h = LatencyHistogram()
        for snap in self.stages.values():
            if snap.get("glass"):
                h.merge(LatencyHistogram.from_sparse(snap["glass"]))
        return h

    def latency(self) -> LatencyHistogram:
        h = LatencyHistogram()
        for snap in self.stages.values():
            if snap.get("latency"):
                h.merge(LatencyHistogram.from_sparse(snap["latency"]))
        return h

    def drops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for snap in [*self.stages.values(), *self.carried.values()]:
            for k, v in snap.get("drops", {}).items():
                out[k] = out.get(k, 0) + v
        return out

    @staticmethod
    def latency_of(sparse: dict[str, Any]) -> dict[str, float]:
        return LatencyHistogram.from_sparse(sparse).summary_ms()

    def per_stream(self, stream_of: dict[str, str], wall_s: float) -> dict[str, dict[str, Any]]:
        """Per stream id: frames written, fps, capture->output latency and drops (from its stages)."""
        out: dict[str, dict[str, Any]] = {}
        for name, sid in sorted(stream_of.items()):
            snap = self.stages.get(name)
            carried = self.carried.get(name, {})
            if snap is None and not carried:
                continue
            s = out.setdefault(sid, {"frames": 0, "drops": {}})
            snap = snap or {}
            for k, v in [*snap.get("drops", {}).items(), *carried.get("drops", {}).items()]:
                s["drops"][k] = s["drops"].get(k, 0) + v
            if snap.get("latency"):  # the sink measures it
                s["frames"] = snap.get("frames_out", 0) + carried.get("frames_out", 0)
                s["latency_ms"] = self.latency_of(snap["latency"])
                elapsed = snap.get("elapsed_s") or 0
                s["fps"] = round(snap.get("frames_out", 0) / elapsed, 2) if elapsed else 0.0
        return out

    def report(self, frames: int, wall_s: float, stream_of: dict[str, str] | None = None) -> dict[str, Any]:
        stages = {}
        for name, snap in sorted(self.stages.items()):
            s = {k: v for k, v in snap.items() if k not in ("latency", "glass")}
            if name in self.carried:
                s["frames_in"] += self.carried[name]["frames_in"]
                s["frames_out"] += self.carried[name]["frames_out"]
            stages[name] = s
        glass = self.glass()
        streams = self.streams()
        return {
            "frames": frames,
            "wall_s": round(wall_s, 3),
            "fps": round(frames / wall_s, 2) if wall_s > 0 else 0.0,
            "latency_ms": self.latency().summary_ms(),
            **({"glass_to_output_ms": glass.summary_ms()} if glass.n else {}),
            **({"streams": streams} if streams else {}),
            "drops": self.drops(),
            "restarts": dict(self.restarts),
            **({"stream_stats": self.per_stream(stream_of, wall_s)} if stream_of else {}),
            "stages": stages,
        }
