"""Adaptive input size for live sources (`segstream run --adaptive`).

A live source drops frames when the pipeline cannot keep up (capture counts them in every header). The
preprocess stage feeds this controller each frame's drop count and resizes to the size it returns:

- **down**: ``drops_to_step`` new drops, and at least ``drop_ratio`` of the frames offered, within
  ``window_s`` -> one step smaller (after ``settle_s`` at the current size, so the frames already in
  flight at the old size are not held against the new one; drops while settling are counted apart);
- **up**: ``calm_s`` without a drop at a reduced size -> one step larger (probing for headroom);
- **hysteresis**: a step down within ``calm_s`` of a step up means that larger size does not fit: the calm
  needed before the next probe doubles (up to ``max_calm_s``), so the size does not flap; it halves back
  each time a probe holds.

Every change is kept (time, from, to, reason) and counted; the stage reports them in its stats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

FRACTIONS = (1.0, 0.75, 0.5, 0.375)  # of the model's native input size, largest first


def ladder(native: tuple[int, int], fractions: tuple[float, ...] = FRACTIONS) -> list[tuple[int, int]]:
    """Input sizes to step through: fractions of the native (w, h), multiples of 8, never below 64x48."""
    w, h = native
    out: list[tuple[int, int]] = []
    for f in fractions:
        size = (max(64, int(round(w * f / 8)) * 8), max(48, int(round(h * f / 8)) * 8))
        if size not in out:
            out.append(size)
    return out


@dataclass
class AdaptiveSize:
    sizes: list[tuple[int, int]]  # largest (native) first
    drops_to_step: int = 2
    drop_ratio: float = 0.1  # ... and at least this share of the frames offered in the window
    window_s: float = 1.0
    settle_s: float = 1.0
    calm_s: float = 3.0
    max_calm_s: float = 24.0
    level: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    _t0: float | None = None
    _changed_at: float = 0.0
    _last_drop_at: float = 0.0
    _last_drops: int | None = None
    _recent: list[tuple[float, int]] = field(default_factory=list)  # (time, new drops) per frame
    transition_drops: int = 0  # drops seen while settling after a change (the old size's backlog)
    _calm: float = 0.0
    _last_up_at: float | None = None
    per_size: dict[str, dict[str, int]] = field(default_factory=dict)  # "WxH" -> frames, drops seen there

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("adaptive: no sizes")
        self._calm = self.calm_s

    @property
    def size(self) -> tuple[int, int]:
        return self.sizes[self.level]

    def update(self, drops_total: int, now: float | None = None) -> tuple[int, int]:
        """One frame's cumulative drop count -> the input size for this frame."""
        now = time.monotonic() if now is None else now
        if self._t0 is None:
            self._t0 = self._changed_at = self._last_drop_at = now
        new = 0 if self._last_drops is None else max(0, drops_total - self._last_drops)
        self._last_drops = drops_total
        if new:
            self._last_drop_at = now
        self._recent.append((now, new))
        w, h = self.size
        here = self.per_size.setdefault(f"{w}x{h}", {"frames": 0, "drops": 0})
        here["frames"] += 1
        if self.changes and now - self._changed_at < self.settle_s:
            self.transition_drops += new
        else:
            here["drops"] += new
        self._recent = [(t, n) for t, n in self._recent if now - t <= self.window_s]
        judged = [n for t, n in self._recent if t >= self._changed_at + self.settle_s]
        in_window = sum(judged)
        overloaded = in_window >= max(self.drops_to_step, self.drop_ratio * (in_window + len(judged)))
        if overloaded and now - self._changed_at >= self.settle_s:
            if self.level + 1 < len(self.sizes):
                if self._last_up_at is not None and now - self._last_up_at <= self._calm + self.settle_s:
                    self._calm = min(self.max_calm_s, self._calm * 2)  # that probe failed: wait longer
                self._step(+1, now, f"{in_window} drops in {self.window_s:g} s")
        elif (
            self.level > 0 and now - self._last_drop_at >= self._calm and now - self._changed_at >= self._calm
        ):
            if self._last_up_at is not None and self._last_up_at == self._changed_at:
                self._calm = max(self.calm_s, self._calm / 2)  # the last probe held
            self._step(-1, now, f"no drops for {self._calm:g} s")
            self._last_up_at = now
        return self.size

    def _step(self, direction: int, now: float, reason: str) -> None:
        old = self.size
        self.level += direction
        self._changed_at = now
        self._recent.clear()
        self.changes.append(
            {
                "t": round(now - (self._t0 or now), 3),
                "from": list(old),
                "to": list(self.size),
                "reason": reason,
            }
        )

    def stats(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "level": self.level,
            "sizes": [list(s) for s in self.sizes],
            "steps_down": sum(1 for c in self.changes if c["to"][0] < c["from"][0]),
            "steps_up": sum(1 for c in self.changes if c["to"][0] > c["from"][0]),
            "changes": self.changes[-20:],
            "per_size": self.per_size,
            "transition_drops": self.transition_drops,
        }


class AdaptiveInput:
    """The preprocess stage's side: model metadata at the controller's size for each frame, one log
    line per change (the stage log), and the figures for the stats."""

    def __init__(self, meta, **options: Any) -> None:
        self.meta = meta
        self.control = AdaptiveSize(ladder(tuple(meta.input_size)), **options)
        self._metas: dict[tuple[int, int], Any] = {}

    def meta_for(self, drops_total: int, now: float | None = None):
        """The ModelMeta whose input size this frame is resized to."""
        from dataclasses import replace

        before = len(self.control.changes)
        size = self.control.update(drops_total, now)
        if len(self.control.changes) > before:
            c = self.control.changes[-1]
            print(
                f"adaptive: {c['from'][0]}x{c['from'][1]} -> {c['to'][0]}x{c['to'][1]} ({c['reason']})",
                flush=True,
            )
        if size not in self._metas:
            self._metas[size] = replace(self.meta, input_size=size)
        return self._metas[size]

    def stats(self) -> dict[str, Any]:
        return self.control.stats()
