"""A frame-rate cap that absorbs jitter: a token bucket of ``rate`` frames a second with a small burst.

A fixed minimum interval between frames (the obvious cap) skips or holds a frame whenever the source's
own jitter makes it arrive a millisecond "early", which costs a live view a whole frame interval of
latency at exactly the rate the cap allows. A bucket keeps the same long-run rate but lets such a
frame through at once.
"""

from __future__ import annotations

import time


class Pacer:
    """At most ``rate`` frames a second on average; up to ``burst`` may go out back to back."""

    def __init__(self, rate: float, burst: float = 2.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got rate={rate}, burst={burst})")
        self.rate = rate
        self.burst = burst
        self._tokens = burst  # full: the jitter of a source at exactly ``rate`` is absorbed from the start
        self._t = time.monotonic()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now

    def wait_s(self) -> float:
        """Seconds until a frame may be sent (0 when one may go now)."""
        self._refill(time.monotonic())
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        """A frame was sent."""
        self._refill(time.monotonic())
        self._tokens -= 1
