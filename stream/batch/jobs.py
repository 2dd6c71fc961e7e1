"""Inputs -> jobs, one per video file or image folder; where each job's outputs go; what is already done.

Outputs of input ``clip.mp4`` land in ``OUT/clip/``: ``overlay.mp4`` (the colorized blend, H.264, the input's
frame count and rate), ``mask/NNNNNN.png`` (class ids, the `images:DIR?what=mask` sink's format) and
``stats.json``. A job is written into ``OUT/.partial/`` and moved into place only when complete, so a folder
in OUT is either whole or absent; a rerun skips a file whose stats say done, whose source is unchanged, and
whose overlay video and mask folder both hold the frame count the stats name.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from engines.errors import SegstreamError

VIDEO_SUFFIXES = frozenset(
    [".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mts", ".mpg", ".mpeg", ".flv"]
)
IMAGE_SUFFIXES = frozenset([".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"])
LIST_SUFFIXES = frozenset([".txt", ".list"])
STATS = "stats.json"
PARTIAL = ".partial"


class BatchInputError(SegstreamError):
    """An input names nothing segstream can read (missing path, empty folder or list, unknown file kind)."""


@dataclass(frozen=True)
class Job:
    source: str  # absolute path of a video file, or of a folder of images
    name: str  # output folder name under OUT, unique within the batch
    kind: str  # "video" or "images"

    def out_dir(self, out: Path) -> Path:
        return out / self.name

    def to_dict(self) -> dict:
        return asdict(self)


def _is_images_dir(p: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir() if f.is_file())


def _expand_one(text: str, base: Path | None = None) -> list[tuple[Path, str]]:
    p = Path(text).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise BatchInputError(f"{p}: cannot read the list ({e})") from None
        items = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not items:
            raise BatchInputError(f"{p}: the list names no file")
        return [x for item in items for x in _expand_one(item, p.parent)]
    if p.is_file():
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            raise BatchInputError(
                f"{p}: not a video file ({', '.join(sorted(VIDEO_SUFFIXES))}), an image folder or a list "
                f"({', '.join(sorted(LIST_SUFFIXES))})"
            )
        return [(p, "video")]
    if p.is_dir():
        videos = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        if videos:
            return [(f, "video") for f in videos]
        if _is_images_dir(p):
            return [(p, "images")]
        raise BatchInputError(f"{p}: the folder holds no video files and no images")
    if re.search(r"[*?\[]", text):
        found = sorted(Path(f) for f in glob.glob(str(p), recursive=True))
        found = [f for f in found if f.is_dir() or f.suffix.lower() in VIDEO_SUFFIXES]
        if not found:
            raise BatchInputError(f"{text}: the pattern matches no video file or folder")
        return [x for f in found for x in _expand_one(str(f))]
    raise BatchInputError(f"{text}: no such file or folder")


def expand_inputs(inputs: list[str]) -> list[Job]:
    """Folders (their videos, or the folder itself when it holds images), globs, list files and files ->
    one Job per distinct source, in the order given. Output names are the file stems, made unique with a
    short hash of the path where two stems collide."""
    if not inputs:
        raise BatchInputError("no INPUTS given (video files, folders, globs or list files)")
    seen: dict[Path, str] = {}
    for text in inputs:
        for path, kind in _expand_one(text):
            seen.setdefault(path.resolve(), kind)
    stems: dict[str, int] = {}
    for path in seen:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    jobs = []
    for path, kind in seen.items():
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem) or "input"
        if stems[path.stem] > 1:
            name += "-" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
        jobs.append(Job(source=str(path), name=name, kind=kind))
    return jobs


def source_stamp(source: str) -> dict:
    """Size and mtime of a file (or of a folder's images): a changed source is segmented again."""
    p = Path(source)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    st = [f.stat() for f in files]
    return {"bytes": sum(s.st_size for s in st), "mtime_ns": max((s.st_mtime_ns for s in st), default=0)}


def video_frames(path: Path) -> int:
    """Frames in a video we wrote, from its container (cheap; our MP4s always carry the count)."""
    import av

    try:
        with av.open(str(path)) as c:
            return int(c.streams.video[0].frames)
    except (av.error.FFmpegError, OSError, IndexError):
        return -1


def verify_done(job: Job, out: Path) -> dict | None:
    """The job's stats when its outputs are complete and its source unchanged; None when it must run."""
    d = job.out_dir(out)
    try:
        stats = json.loads((d / STATS).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stats.get("status") != "done" or stats.get("source_stamp") != source_stamp(job.source):
        return None
    n = int(stats.get("frames", -1))
    if n <= 0 or len(list((d / "mask").glob("*.png"))) != n:
        return None
    if video_frames(d / "overlay.mp4") != n:
        return None
    return stats
