"""``--depth URI``: the depth stream of an RGB-D run, and the small DepthSource protocol its sources share.

Three sources, one file each:

* a folder of 16-bit PNG depth images in millimetres, 0 = no measurement (``DIR``, ``images:DIR``;
  stream.sources.depth_folder);
* a depth video, 8- or 16-bit grey (``depth.mkv``, ``file:depth.mp4``; stream.sources.depth_video);
* a synthetic depth pattern matching the synthetic colour source (``synthetic:``,
  ``synthetic://?size=WxH&fps=N``; stream.sources.depth_synthetic), so a demo needs no files.

Every depth frame is (H, W) uint16 millimetres with its index and a timestamp on the source's own
timeline (seconds: a video's PTS, a folder's file names in ms or index / fps, a live source's arrival
time); stream.sources.depth_pairing pairs them with the colour frames by index or by timestamp.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.sources.base import SourceError

PAIRINGS = ("index", "timestamp")
DEFAULT_TOLERANCE_MS = 20.0  # under half a frame interval up to 25 fps: one depth frame per colour frame
VIDEO_EXTENSIONS = frozenset([".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".nut"])


@dataclass(frozen=True)
class DepthInfo:
    uri: str
    width: int
    height: int
    fps: float  # nominal rate; 0 when unknown
    live: bool  # frames stamped with their arrival time (time.time()); else on the source's timeline
    timed: bool = True  # frames carry timestamps pairing by timestamp can use


@dataclass
class DepthFrame:
    depth: np.ndarray  # (H, W) uint16 millimetres, 0 = no measurement
    index: int  # position in the depth source, from 0
    t: float  # seconds: PTS / name / index / fps, or time.time() of arrival for a live source


class DepthSource(ABC):
    """``open(live)`` validates and returns DepthInfo (SourceError with a clear line otherwise; ``live``
    says whether the colour source is live, for sources that can be either); ``read()`` returns the next
    depth frame in order, or None: the end (recorded sources) or nothing new yet (live ones);
    ``close()`` releases everything."""

    uri: str

    @abstractmethod
    def open(self, live: bool = False) -> DepthInfo: ...

    @abstractmethod
    def read(self) -> DepthFrame | None: ...

    @abstractmethod
    def close(self) -> None: ...


def open_depth(uri: str) -> DepthSource:
    """Map a ``--depth`` URI to its DepthSource (nothing opened yet; SourceError for an unknown one)."""
    from stream.uri import Options, split_query

    text = (uri or "").strip()
    if re.match(r"^synthetic:", text, flags=re.I):
        from stream.sources.depth_synthetic import SyntheticDepth

        _, q = split_query(re.sub(r"^synthetic:(//)?", "", text, flags=re.I))
        opts = Options(f"--depth {text}", q)
        src = SyntheticDepth(
            size=opts.size("size", (640, 480)),
            fps=opts.float("fps", 30.0),
            frames=opts.int("frames", 0),
            live=opts.bool("live", None) if "live" in q else None,  # None: as the colour source
            near_mm=opts.float("near_mm", 800.0),
            far_mm=opts.float("far_mm", 4000.0),
            uri=text,
        )
        opts.check_unused()
        return src
    body, q = split_query(re.sub(r"^(images|file):(//)?", "", text, flags=re.I))
    opts = Options(f"--depth {text}", q)
    path = Path(body)
    if path.is_dir() or text.lower().startswith("images:"):
        from stream.sources.depth_folder import DepthFolder

        fps = opts.float("fps", 0.0)
        if fps < 0:
            raise opts.bad("fps", "a frame rate >= 0 (0: file names are timestamps in ms)")
        src = DepthFolder(body, fps=fps, uri=text)
    elif path.suffix.lower() in VIDEO_EXTENSIONS or text.lower().startswith("file:"):
        from stream.sources.depth_video import DepthVideo

        scale = opts.float("scale_mm", 0.0) if "scale_mm" in q else None
        max_mm = opts.float("max_mm", 0.0) if "max_mm" in q else None
        if scale is not None and max_mm is not None:
            raise opts.bad("max_mm", "given with scale_mm (give one: mm per grey level, or mm at full scale)")
        if scale is not None and not 0 < scale <= 1000:
            raise opts.bad("scale_mm", "millimetres per grey level in (0, 1000]")
        if max_mm is not None and not 0 < max_mm <= 65535:
            raise opts.bad("max_mm", "millimetres at full scale in (0, 65535]")
        src = DepthVideo(body, scale_mm=scale, max_mm=max_mm, uri=text)
    else:
        raise SourceError(
            f"--depth {text}: not a folder, a video file or synthetic: (expected a folder of 16-bit depth "
            "PNGs in mm, a depth video such as depth.mkv, or synthetic://?size=WxH)"
        )
    offset = opts.float("offset_ms", 0.0)
    src.offset_s = offset / 1000.0  # type: ignore[attr-defined]
    opts.check_unused()
    return src


def probe_depth(uri: str, colour_live: bool) -> DepthInfo:
    """Open and close the depth source once, before any stage starts: a missing folder, an unreadable
    video or a bad option is one line then, not a stage failure later."""
    src = open_depth(uri)
    try:
        return src.open(colour_live)
    finally:
        src.close()


def depth_folder(uri: str) -> Path:
    """``DIR`` or ``images:DIR`` -> the folder (SourceError when it is not one)."""
    path = Path(uri.removeprefix("images:").removeprefix("//"))
    if not path.is_dir():
        raise SourceError(f"--depth {uri}: not a folder (expected a folder of 16-bit depth PNGs in mm)")
    return path


def ring_bytes(uri: str | None, frame_size: tuple[int, int] | None) -> int:
    """Bytes of a ring slot's depth region: the depth source's frame size (uint16), else the colour
    frame's, else 1080p; 0 without depth. A larger depth image still travels, inline."""
    if not uri:
        return 0
    try:
        info = probe_depth(uri, colour_live=False)
        return info.width * info.height * 2
    except SourceError:  # reported in one line by the run's checks; the ring needs only a size here
        w, h = frame_size or (1920, 1080)
        return w * h * 2
