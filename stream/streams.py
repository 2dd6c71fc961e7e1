"""Streams of a run: what each one reads, where it writes, and the names of its stages.

A run holds one or more streams. Each has an id (the ``stream`` field of every frame and mask header, the
mask topic), a source URI, its own sinks and options; captures and overlays are per stream, preprocess
and infer are shared (frames of every stream are batched together). A run given one source keeps the
names it always had (stream ``0``, stages ``capture`` and ``overlay``); other streams' stages are
``capture@ID`` and ``overlay@ID``.

Sink specs may hold ``{stream}``, replaced by the stream id: ``--sink 'out-{stream}.mp4'`` with two
sources writes out-0.mp4 and out-1.mp4. A sink that several streams would share (one file, one port) is
refused before anything starts, naming the stream and the spec.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from engines.errors import SegstreamError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")  # file names, ipc paths (108 bytes), topics
KEYS = ("id", "uri", "sinks", "live", "max_frames")
MULTI_DEFAULT_SINK = "segstream-out-{stream}.mp4"


class StreamError(SegstreamError, ValueError):
    """A stream's configuration is invalid; the message names the stream, key and value."""


@dataclass
class StreamSpec:
    id: str
    uri: str
    sinks: list[str] = field(default_factory=list)
    live: bool | None = None  # None: as the source says
    max_frames: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse(d: Any, where: str) -> StreamSpec:
    """One stream table (from a config file, the control API, or built from the command line)."""
    if not isinstance(d, dict):
        raise StreamError(f"{where}: a stream must be a table with keys {', '.join(KEYS)}, got {d!r}")
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise StreamError(f"{where}: key '{unknown[0]}' = {d[unknown[0]]!r}: unknown key")
    sid = d.get("id")
    if not isinstance(sid, str) or not ID_RE.match(sid):
        raise StreamError(
            f"{where}: key 'id' = {sid!r}: must be 1-40 letters, digits, '_', '.', '-' (not first)"
        )
    uri = d.get("uri")
    if not isinstance(uri, str) or not uri:
        raise StreamError(f"{where}: key 'uri' = {uri!r}: must be a non-empty string (path or URI)")
    sinks = d.get("sinks", [])
    if not isinstance(sinks, list) or not all(isinstance(s, str) and s for s in sinks):
        raise StreamError(f"{where}: key 'sinks' = {sinks!r}: must be a list of sink specs")
    live = d.get("live")
    if live is not None and not isinstance(live, bool):
        raise StreamError(f"{where}: key 'live' = {live!r}: must be true or false")
    mf = d.get("max_frames")
    if mf is not None and (type(mf) is not int or mf < 1):
        raise StreamError(f"{where}: key 'max_frames' = {mf!r}: must be a positive integer")
    return StreamSpec(
        id=sid, uri=uri, sinks=[s.replace("{stream}", sid) for s in sinks], live=live, max_frames=mf
    )


def check_distinct(specs: list[StreamSpec]) -> None:
    """Ids unique; no sink spec (a file, a folder, a port) shared by two streams."""
    seen: dict[str, str] = {}
    owner: dict[str, str] = {}
    for s in specs:
        if s.id in seen:
            raise StreamError(f"stream '{s.id}': key 'id' = {s.id!r}: used by two streams")
        seen[s.id] = s.id
        for spec in s.sinks:
            if spec == "display":
                continue  # one window per stream, named by the stream
            if spec in owner:
                raise StreamError(
                    f"stream '{s.id}': sink {spec!r} is also stream '{owner[spec]}''s: give each stream its "
                    "own (a sink spec may contain {stream}, replaced by the stream id)"
                )
            owner[spec] = s.id


def stage_name(stage: str, stream_id: str) -> str:
    """capture/overlay of stream ``0`` keep their plain names (one-stream runs look as they always did)."""
    return stage if stream_id == "0" else f"{stage}@{stream_id}"
