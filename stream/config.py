"""One validated configuration object for a pipeline run.

Every check names the key and the value it rejects, so ``segstream run`` can print one line.
The object serializes to JSON: the supervisor hands it to each stage process that way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engines.errors import SegstreamError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "default.onnx"
DEFAULT_SOURCE = ASSETS / "sample.mp4"
DEFAULT_OUTPUT = "segstream-out.mp4"


class ConfigError(SegstreamError, ValueError):
    """A configuration value is invalid; the message names key and value."""


@dataclass
class PipelineConfig:
    source: str = str(DEFAULT_SOURCE)
    model: str = str(DEFAULT_MODEL)
    backend: str = "auto"
    device: str = "auto"
    sinks: list[str] = field(default_factory=list)
    max_frames: int | None = None
    batch: int | None = None  # None: the model's max batch
    workers: int = 1  # local infer workers
    threads: int | None = None  # inference threads per worker (None: backend default)
    opacity: float = 0.5
    legend: bool = False
    live: bool | None = None  # None: as the source says
    stats_json: str | None = None
    # transport / timing
    slots: int = 8  # shared-memory ring slots = frames in flight (bounds latency and memory)
    batch_deadline_ms: float = 5.0  # infer never waits longer than this to fill a batch
    heartbeat_s: float = 0.5
    stall_timeout_s: float = 15.0  # no heartbeat for this long -> the stage is restarted
    startup_timeout_s: float = 60.0  # first heartbeat must come within this (model load)
    restart_budget: int = 3  # restarts allowed per stage within restart_window_s
    restart_window_s: float = 60.0
    backoff_s: float = 0.5  # first restart delay, doubled per restart in the window
    reorder_timeout_s: float = 0.5  # live: a seq missing this long is dropped and skipped
    lost_timeout_s: float = 60.0  # files: a seq missing this long (after replays) is counted lost
    remote_timeout_s: float = 60.0  # remote infer: no result this long with frames in flight ends the run
    term_grace_s: float = 5.0  # a stage told to stop (SIGTERM) gets this long to finalize before SIGKILL
    shm: bool = True  # same-host pixels through the shared-memory ring
    remote_infer: list[str] = field(default_factory=list)  # [in endpoint, out endpoint] for tcp workers
    run_dir: str | None = None  # where ipc sockets and stage logs live (set by the supervisor)
    progress: bool = True
    pin_cpus: bool = True  # with --threads: infer workers get cores of their own (stream.cpus)

    def __post_init__(self) -> None:
        self.validate()

    def wants_confidence(self) -> bool:
        """Whether any sink publishes the confidence map (constructing a sink opens nothing)."""
        from stream.uri import open_sink

        return any(getattr(open_sink(s), "wants_confidence", False) for s in self.sinks)

    def validate(self) -> PipelineConfig:
        def bad(key: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"config key '{key}' = {value!r}: {why}")

        if not isinstance(self.source, str) or not self.source:
            raise bad("source", self.source, "must be a non-empty string (path or URI)")
        if self.backend not in BACKENDS:
            raise bad("backend", self.backend, f"must be one of {', '.join(BACKENDS)}")
        for key in ("max_frames", "batch", "threads"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise bad(key, v, "must be a positive integer")
        if not isinstance(self.workers, int) or self.workers < 0 or self.workers > 64:
            raise bad("workers", self.workers, "must be an integer 0..64")
        if self.workers == 0 and not self.remote_infer:
            raise bad("workers", self.workers, "0 local infer workers needs remote_infer endpoints")
        if not isinstance(self.opacity, (int, float)) or not 0.0 <= float(self.opacity) <= 1.0:
            raise bad("opacity", self.opacity, "must be a number in [0, 1]")
        if not isinstance(self.slots, int) or not 2 <= self.slots <= 256:
            raise bad("slots", self.slots, "must be an integer 2..256")
        for key in (
            "batch_deadline_ms",
            "heartbeat_s",
            "stall_timeout_s",
            "startup_timeout_s",
            "restart_window_s",
            "backoff_s",
            "reorder_timeout_s",
            "lost_timeout_s",
            "remote_timeout_s",
            "term_grace_s",
        ):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise bad(key, v, "must be a non-negative number")
        if self.stall_timeout_s <= self.heartbeat_s:
            raise bad("stall_timeout_s", self.stall_timeout_s, "must exceed heartbeat_s")
        if self.remote_timeout_s <= 0:
            raise bad("remote_timeout_s", self.remote_timeout_s, "must be a positive number of seconds")
        if not isinstance(self.restart_budget, int) or self.restart_budget < 0:
            raise bad("restart_budget", self.restart_budget, "must be a non-negative integer")
        if not isinstance(self.sinks, list) or not all(isinstance(s, str) and s for s in self.sinks):
            raise bad("sinks", self.sinks, "must be a list of sink specs")
        if self.remote_infer:
            from stream.transport import parse_endpoint

            if len(self.remote_infer) != 2:
                raise bad("remote_infer", self.remote_infer, "needs two endpoints: IN OUT")
            for ep, kind in zip(self.remote_infer, ("push", "pull"), strict=True):
                try:
                    parse_endpoint(ep, kind, True)
                except SegstreamError as e:
                    raise bad("remote_infer", ep, str(e)) from None
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"config key '{unknown[0]}' = {d[unknown[0]]!r}: unknown key")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"config: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> PipelineConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError("config must be a JSON object")
        return cls.from_dict(d)
