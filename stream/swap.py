"""Swapping the model of a running pipeline (``segstream streams model --control URL NEW_MODEL``).

1. The new model is checked as ``segstream run`` checks its own (file, backend, metadata, RGB-D and
   --adaptive compatibility, same input channels); a model that fails is refused in one line and the
   old one keeps running.
2. Fresh infer workers (generation g) load it and warm up; preprocess binds their own inputs socket
   (``inputs-g<g>``). A worker that fails to load refuses the swap the same way.
3. Once every new worker is ready, preprocess switches at a frame boundary: from the next frame it takes,
   it prepares for the new model, stamps the header with ``gen = g`` and sends it to the new workers;
   what it prepared before goes on to the old ones. No frame is dropped or inferred twice; the overlay
   puts both generations' results back in seq order, and from the first frame of generation g it uses
   the new class table (colours; the mask publisher's digest changes, so subscribers re-fetch).
4. Preprocess reports how many frames the old generation was sent; once the old workers answered them
   all, they are stopped.

The control request is answered when every running stream has written its first frame of the new
generation: the reply names that seq per stream and the gap between output frames around it; the run's
stats JSON records each swap (``swaps``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from engines.errors import SegstreamError

SWITCH_WAIT_S = 10.0  # a stream that writes no frame of the new model by then is named as pending


class SwapError(SegstreamError):
    """A model swap that cannot be done (bad model file, incompatible model, one under way)."""


def gen_endpoint(endpoint: str, gen: int) -> str:
    """The inputs endpoint of generation ``gen`` (0: the run's own)."""
    return endpoint if gen == 0 else f"{endpoint}-g{gen}"


def check_model(cfg, current: dict[str, Any], path: str) -> dict[str, Any]:
    """What ``probe_model`` says of the new model, checked against the run as at start-up; SwapError
    (one line) otherwise."""
    from pathlib import Path

    from engines.meta import ModelMeta
    from stream.commands.run import check_adaptive, check_depth
    from stream.pipeline import probe_model

    if not isinstance(path, str) or not path:
        raise SwapError(f"model: key 'model' = {path!r}: must be a model file path")
    if "://" not in path and not Path(path).is_file():
        raise SwapError(f"model {path}: no such file")
    if cfg.remote_infer:
        raise SwapError("model swap is not supported with --remote-infer (the workers are not this run's)")
    new_cfg = replace(cfg, model=path)
    try:
        model = probe_model(new_cfg)
        check_depth(new_cfg, model)
        if cfg.adaptive:
            check_adaptive(new_cfg, model)
        new = ModelMeta.from_json(model["meta"])
    except SegstreamError as e:
        raise SwapError(f"model {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt file may fail anywhere in its parser
        raise SwapError(f"model {path}: cannot be read ({type(e).__name__}: {e})") from None
    old = ModelMeta.from_json(current["meta"])
    if new.channels != old.channels:
        raise SwapError(
            f"model {path}: takes {new.channels} input channels, the running model {old.channels}"
        )
    return model


@dataclass
class Swap:
    """One swap in progress, as the supervisor drives it."""

    gen: int
    path: str
    model: dict[str, Any]
    workers: list[str]  # the new infer workers' names
    old: list[str]  # the infer workers they replace
    pending: Any  # stream.control.Pending: the control request's reply
    t_start: float = field(default_factory=time.monotonic)
    phase: str = "warming"  # warming -> switching -> switched -> done
    t_ready: float | None = None
    t_switch_cmd: float = 0.0
    t_switched: float | None = None
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # stream -> {seq, gap_ms}
    old_sent: int | None = None  # frames preprocess sent to the old generation (once drained)
    replied: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "time": time.time(),
            "model": self.path,
            "gen": self.gen,
            "warm_s": round((self.t_ready or self.t_start) - self.t_start, 3),
            "streams": {sid: dict(v) for sid, v in self.streams.items()},
            **self.first(),
        }

    def first(self) -> dict[str, Any]:
        """The first stream's switch seq and gap (the whole answer for a one-stream run)."""
        for v in self.streams.values():
            if "seq" in v:
                return {"seq": v["seq"], "gap_ms": v.get("gap_ms")}
        return {"seq": None, "gap_ms": None}
