"""One validated configuration object for a pipeline run.

Every check names the key and the value it rejects, so ``segstream run`` can print one line.
The object serializes to JSON: the supervisor hands it to each stage process that way.
"""

from __future__ import annotations

import argparse
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
    shade_uncertain: float | None = None  # overlay: hatch pixels whose confidence is below this (0-1)
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
    # frames larger than the model (engines.tiling): "scaled" resizes the frame to the model input;
    # "tiled" infers overlapping model-size tiles of the frame resized by infer_scale, blended
    infer_mode: str = "scaled"
    infer_scale: float = 1.0
    tile_overlap: float = 0.25
    # live sources: step the model input size down under drops, back up with headroom (stream.adaptive)
    adaptive: bool = False
    # RGB-D models: the depth source (stream.sources.depth: a folder of 16-bit PNGs in mm, a depth video,
    # synthetic:) and how its frames pair with the colour frames: by index, or by timestamp within a tolerance
    depth: str | None = None
    depth_pairing: str = "index"
    depth_tolerance_ms: float = 20.0
    # several streams (stream.streams): tables of id, uri, sinks, live, max_frames; empty: the one stream
    # given by source/sinks/live/max_frames, id "0"
    streams: list[dict[str, Any]] = field(default_factory=list)
    # the control API (stream.control): add/remove/list streams while the run goes on
    control: str | None = None  # tcp://127.0.0.1:PORT or ipc://PATH
    control_token: str | None = None  # file holding the token every request must carry

    def __post_init__(self) -> None:
        self.validate()

    def stream_specs(self) -> list:
        """The run's streams (stream.streams.StreamSpec), validated."""
        from stream.streams import StreamSpec, parse

        if not self.streams:
            return [StreamSpec("0", self.source, list(self.sinks), self.live, self.max_frames)]
        return [parse(d, f"stream {i + 1}") for i, d in enumerate(self.streams)]

    def for_stream(self, spec) -> PipelineConfig:
        """This config as one stream's capture and overlay see it: its source, sinks and options."""
        d = asdict(self)
        d.update(
            source=spec.uri,
            sinks=list(spec.sinks),
            live=spec.live if spec.live is not None else self.live,
            max_frames=spec.max_frames if spec.max_frames is not None else self.max_frames,
            streams=[],
        )
        return PipelineConfig.from_dict(d)

    def wants_confidence(self) -> bool:
        """Whether any sink publishes the confidence map (constructing a sink opens nothing)."""
        from stream.uri import open_sink

        wanted = any(getattr(open_sink(s), "wants_confidence", False) for s in self.sinks)
        return wanted or self.shade_uncertain is not None  # the shading reads the confidence map

    def wants_maps(self) -> tuple[str, ...]:
        """Uncertainty maps ('entropy', 'margin') some sink writes: infer computes them from the logits."""
        from stream.uri import open_sink

        return tuple(sorted({m for s in self.sinks for m in getattr(open_sink(s), "wants_maps", ())}))

    def wants_depth(self) -> bool:
        """Whether a sink republishes the depth image (zmq-pub ?depth=raw|png)."""
        from stream.uri import open_sink

        return any(getattr(open_sink(s), "wants_depth", False) for s in self.sinks)

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
        su = self.shade_uncertain
        if su is not None and (isinstance(su, bool) or not isinstance(su, (int, float)) or not 0 < su <= 1):
            raise bad("shade_uncertain", su, "must be a confidence in (0, 1]")
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
        from engines.tiling import TilingError, check_params

        try:
            check_params(self.infer_mode, self.infer_scale, self.tile_overlap)
        except TilingError as e:
            raise bad(str(e.key), e.value, e.why) from None
        if not isinstance(self.adaptive, bool):
            raise bad("adaptive", self.adaptive, "must be true or false")
        if self.adaptive and self.infer_mode != "scaled":
            raise bad("adaptive", self.adaptive, "steps the model input size: needs infer_mode 'scaled'")
        if self.adaptive and self.batch not in (None, 1):
            raise bad("batch", self.batch, "adaptive runs infer one frame at a time (sizes change)")
        if self.depth_pairing not in ("index", "timestamp"):
            raise bad("depth_pairing", self.depth_pairing, "must be index or timestamp")
        tol = self.depth_tolerance_ms
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol <= 10000:
            raise bad("depth_tolerance_ms", tol, "must be milliseconds in (0, 10000]")
        if self.depth is not None:
            from stream.sources.depth import open_depth

            if not isinstance(self.depth, str) or not self.depth:
                raise bad("depth", self.depth, "must be a depth source: folder, depth video or synthetic:")
            try:
                open_depth(self.depth)  # the URI and its options; the source opens when the run checks it
            except SegstreamError as e:
                raise bad("depth", self.depth, str(e)) from None
            if self.infer_mode != "scaled" or self.adaptive:
                # remote workers are fine: preprocess sends them the prepared RGB-D input inline
                raise bad("depth", self.depth, "RGB-D runs need infer_mode 'scaled', no adaptive")
            if len(self.streams) > 1:
                raise bad("depth", self.depth, "pairs depth with one stream (several streams given)")
        if not isinstance(self.streams, list):
            raise bad("streams", self.streams, "must be a list of stream tables")
        if self.streams:
            from stream.streams import StreamError, check_distinct

            try:
                check_distinct(self.stream_specs())
            except StreamError as e:
                raise ConfigError(f"config key 'streams': {e}") from None
            if self.remote_infer and len(self.streams) > 1:
                raise bad("remote_infer", self.remote_infer, "works with one stream (several streams given)")
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


def add_infer_mode_arguments(p: argparse.ArgumentParser) -> None:
    """--infer-mode / --infer-scale / --tile-overlap, shared by run, predict and eval."""
    p.add_argument(
        "--infer-mode",
        choices=("scaled", "tiled"),
        default="scaled",
        help="frames larger than the model: scaled (resize to the model input, fast) or tiled "
        "(overlapping model-size tiles, blended, full-resolution mask)",
    )
    p.add_argument(
        "--infer-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="tiled: resize the frame by F before tiling (0.5 on 1920x1440 tiles a 960x720 frame)",
    )
    p.add_argument(
        "--tile-overlap",
        type=float,
        default=0.25,
        metavar="F",
        help="tiled: overlap of neighbouring tiles, fraction of a tile (default 0.25)",
    )


def load_run_config(path: str | Path) -> dict[str, Any]:
    """A run configuration file (TOML, or JSON for a .json name) -> its keys, checked against
    PipelineConfig's fields (values are validated when the config is built). Errors name the file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            tomllib = None
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read: {e}") from None
    is_json = p.suffix.lower() == ".json"
    if not is_json and tomllib is None:
        raise ConfigError(f"config file {p}: TOML needs Python 3.11+ or `pip install tomli`; or write JSON")
    try:
        d = json.loads(text) if is_json else tomllib.loads(text)
    except (json.JSONDecodeError, ValueError) as e:  # TOMLDecodeError is a ValueError
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"config file {p} is not valid {kind}: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {p} must hold a table of keys")
    known = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"config file {p}: key '{unknown[0]}' = {d[unknown[0]]!r}: unknown key")
    return d
