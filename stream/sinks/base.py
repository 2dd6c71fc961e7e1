"""The Sink protocol: where results go (window, video file, image folder, mask publisher, browser).

The overlay/publish stage opens every sink with a StreamInfo, writes each Result in seq order, and
closes every sink at the end (also on Ctrl-C / SIGTERM, so files are finalized).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import SegstreamError
from engines.meta import ClassTable


class SinkError(SegstreamError):
    """A sink cannot be opened or written: unknown spec, unwritable path, missing encoder."""


@dataclass
class StreamInfo:
    stream_id: str
    width: int  # frame size; a mid-stream size change arrives as a Result with another shape
    height: int
    fps: float  # nominal source rate (0 when unknown)
    classes: ClassTable
    live: bool  # webcam / network: True; file / image folder: False
    total_frames: int | None = None  # when the source knows it


@dataclass
class Result:
    seq: int  # pipeline sequence number, gap-free for files
    frame_index: int  # index of the frame in its source
    frame: np.ndarray  # original BGR frame (H, W, 3) uint8
    mask: np.ndarray  # class ids (H, W) uint8 at frame size
    overlay: np.ndarray | None = None  # colorized blend (H, W, 3) BGR, made once when a sink wants it
    confidence: np.ndarray | None = None  # (H, W) uint8 max-softmax * 255, when the model was asked
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # 'entropy'/'margin' (H, W) uint8, when asked
    timestamps: dict[str, float] = field(default_factory=dict)  # stage -> time.time() seconds
    drops: dict[str, int] = field(default_factory=dict)  # cumulative drop counters by cause
    stats: dict[str, Any] | None = None  # latest per-stage metrics snapshot (for live views)
    # live sources: uri (password redacted), reconnects, outages, outage_s, down (stream.headers.link_of)
    source: dict[str, Any] = field(default_factory=dict)
    # --adaptive: the (w, h) the model ran at for this frame (it changes with the load); None otherwise
    infer_size: tuple[int, int] | None = None
    # the class table of the model that made this mask: it changes when the model is swapped mid-run
    # (stream.swap); None: StreamInfo.classes
    classes: ClassTable | None = None
    # RGB-D: the depth image paired with the frame, (H, W) uint16 mm at the depth source's size, when a
    # sink wants it (Sink.wants_depth)
    depth: np.ndarray | None = None


class Sink(ABC):
    """One output. ``wants_overlay`` tells the stage whether to colorize/blend for it."""

    wants_overlay: bool = True
    #: True when the sink uses Result.confidence (the infer stage then asks the model for it)
    wants_confidence: bool = False
    #: uncertainty maps the sink uses (Result.maps): 'entropy', 'margin' (engines.calibration)
    wants_maps: tuple[str, ...] = ()
    #: True when the sink uses Result.depth (RGB-D runs: the overlay stage then copies it out of the ring)
    wants_depth: bool = False

    @abstractmethod
    def open(self, info: StreamInfo) -> None: ...

    @abstractmethod
    def write(self, result: Result) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def preflight(self) -> None:  # noqa: B027 - optional hook: most sinks have nothing to check early
        """Refuse, before any process starts, what ``open()`` would refuse later (paths, permissions)."""

    def warm(self) -> None:  # noqa: B027 - optional hook: most sinks have nothing to load
        """Load what ``open()`` and the first ``write()`` would (compiled encoders), before the stream's
        first frame; safe to call from another thread and more than once (open() calls it too)."""


def check_writable_under(spec: str, path: Path) -> None:
    """Raise SinkError unless ``path`` (a file or folder, existing or not) could be created or written:
    probes the nearest existing folder with a temporary file (removed at once), so permissions, read-only
    mounts and root all answer the same way; creates nothing that stays."""
    import tempfile

    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise SinkError(f"{spec}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SinkError(f"{spec}: cannot write in {folder} ({e.strerror or e})") from None
