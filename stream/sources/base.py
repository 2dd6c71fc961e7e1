"""The Source protocol: one small interface for webcams, files, network streams, image folders and
the synthetic pattern. Every read reports its status explicitly."""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from engines.errors import SegstreamError


class SourceError(SegstreamError):
    """A source cannot be opened or read: unknown URI, missing file, camera absent, stream unreachable."""


class ReadStatus(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"  # nothing within the timeout; the source is still alive
    EOS = "eos"  # end of stream (file finished, or a live source gave up for good)
    ERROR = "error"  # a frame could not be read (decode error); the source may go on


@dataclass
class SourceInfo:
    uri: str
    width: int
    height: int
    fps: float  # nominal rate; 0 when unknown
    live: bool  # live sources drop (newest frame wins); file sources never drop
    total_frames: int | None = None


@dataclass
class Frame:
    status: ReadStatus
    image: np.ndarray | None = None  # BGR uint8 (H, W, 3) when status is OK
    index: int = -1  # frame index in the source (counts every frame the source produced)
    timestamp: float = 0.0  # time.time() at capture
    error: str | None = None  # what went wrong, for ERROR
    # the camera's own wall clock at capture (RTSP: RTCP sender reports), for glass-to-output latency
    camera_time: float | None = None


@dataclass
class SourceStats:
    frames: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    dropped: int = 0  # live sources: frames replaced by a newer one before anyone took them
    extra: dict[str, int] = field(default_factory=dict)
    outages: int = 0  # network sources: times the stream was lost
    outage_s: float = 0.0  # seconds without a stream in outages that ended
    down_since: float | None = None  # time.monotonic() when the current outage began; None while up

    def link(self) -> dict[str, int | float | bool]:
        """Reconnect counters for stats, headers and the live view (an outage in progress counts too)."""
        down = self.outage_s + (time.monotonic() - self.down_since if self.down_since is not None else 0.0)
        return {
            "reconnects": self.reconnects,
            "outages": self.outages,
            "outage_s": round(down, 3),
            "down": self.down_since is not None,
        }


class Source(ABC):
    """``open()`` validates and returns SourceInfo (raises SourceError with a clear message);
    ``read(timeout)`` returns one Frame; ``close()`` releases everything. An EOS whose ``error`` is set
    means the source failed (a live stream's reconnect budget spent, a lost connection): the run fails."""

    stats: SourceStats

    def take_notices(self) -> list[str]:
        """Lines the user should see as they happen (a stream lost, each reconnect attempt, a truncated
        file); the capture stage forwards them to the supervisor, which prints them on the terminal."""
        return []

    @abstractmethod
    def open(self) -> SourceInfo: ...

    @abstractmethod
    def read(self, timeout: float = 1.0) -> Frame: ...

    @abstractmethod
    def close(self) -> None: ...
