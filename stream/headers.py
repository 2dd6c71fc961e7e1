"""The internal frame header that travels between stages, and its wire form.

A message is a ZeroMQ multipart: frame 0 is the header as compact JSON, frames 1.. are raw array
bytes described in ``header.parts`` (name, shape, dtype) in order. Pixels that live in the
shared-memory ring are not sent at all: ``slot`` names the ring slot instead. No pickle anywhere,
so a stage on another host (or in another language) can read the stream.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.errors import SegstreamError

HEADER_VERSION = 1

FRAME = "frame"  # one frame (and whatever arrays a stage attached)
EOS = "eos"  # end of stream; ``seq`` = number of frames sent
HEARTBEAT = "hb"  # idle heartbeat on the data path
# before a stream's first frame: the shape its frames will have, so every stage downstream warms its
# per-frame path (ring attached, resize and blend kernels, sinks opened) before a frame waits on it
PRIME = "prime"
WANTS = ("confidence", "entropy", "margin")  # maps infer makes on request (FrameHeader.want)


class HeaderError(SegstreamError, ValueError):
    """A message on the wire is not a segstream frame message."""


def _ints(values: Any, what: str) -> tuple[int, ...]:
    """A JSON list of integers (a shape), checked: a tcp port may carry anything."""
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise HeaderError(f"malformed frame header: {what} {values!r} is not a list of integers")
    return tuple(values)


def _counts(values: Any) -> dict[str, int]:
    if not isinstance(values, dict) or not all(type(v) is int for v in values.values()):
        raise HeaderError("malformed frame header: drop counters are not integers")
    return {str(k): v for k, v in values.items()}


@dataclass
class Part:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class FrameHeader:
    kind: str = FRAME
    stream: str = "0"
    seq: int = 0  # pipeline sequence number, gap-free at capture
    index: int = 0  # frame index in the source
    ts: dict[str, float] = field(default_factory=dict)  # stage -> time.time() when it finished
    slot: int = -1  # shared-memory ring slot holding the frame (and prepared input); -1: none
    shape: tuple[int, ...] = ()  # source frame shape (H, W, C)
    dtype: str = "uint8"
    drops: dict[str, int] = field(default_factory=dict)  # cumulative drop counters by cause
    parts: list[Part] = field(default_factory=list)  # inline arrays, in multipart order
    # the stream's shared-memory ring (name, slots, frame_bytes, input_bytes[, depth_bytes]): shared stages
    # (preprocess, infer) serve many streams, each with its own ring, and attach the one a frame names;
    # () = none
    ring: tuple = ()
    # what infer is asked for besides the class ids ("confidence", "entropy", "margin"): the stream's sinks
    # decide, and a remote worker reads it here as a local one does
    want: tuple[str, ...] = ()
    # what capture says of the stream's source (w, h, fps, live, total, uri): sinks open with it, infer
    # batches live frames without waiting
    source: dict[str, Any] = field(default_factory=dict)
    link: dict[str, Any] = field(default_factory=dict)  # a live source's link counters (capture)
    input: tuple = ()  # (shape, dtype) of the model input preprocess wrote into the frame's ring slot
    depth: tuple = ()  # RGB-D: (shape, dtype) of the depth image capture wrote into the frame's ring slot
    tiles: float | None = None  # tiled mode: the tile overlap infer blends with (preprocess)
    infer_size: tuple[int, ...] = ()  # adaptive mode: the model input size preprocess chose (w, h)
    gen: int = 0  # the model generation preprocess prepared the frame for (0 until a model swap)
    # annotations of other producers, passed through untouched; segstream's stages declare theirs above
    extra: dict[str, Any] = field(default_factory=dict)

    def stamp(self, stage: str) -> FrameHeader:
        self.ts[stage] = time.time()
        return self

    def to_bytes(self) -> bytes:
        d = {
            "v": HEADER_VERSION,
            "k": self.kind,
            "st": self.stream,
            "s": self.seq,
            "i": self.index,
            "ts": self.ts,
            "sl": self.slot,
            "sh": list(self.shape),
            "dt": self.dtype,
        }
        if self.drops:
            d["dr"] = self.drops
        if self.ring:
            d["rg"] = list(self.ring)
        if self.want:
            d["w"] = list(self.want)
        if self.source:
            d["so"] = self.source
        if self.link:
            d["ln"] = self.link
        if self.input:
            d["in"] = [list(self.input[0]), self.input[1]]
        if self.depth:
            d["dp"] = [list(self.depth[0]), self.depth[1]]
        if self.tiles is not None:
            d["tl"] = self.tiles
        if self.infer_size:
            d["is"] = list(self.infer_size)
        if self.gen:
            d["g"] = self.gen
        if self.parts:
            d["p"] = [[p.name, list(p.shape), p.dtype] for p in self.parts]
        if self.extra:
            d["x"] = self.extra
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> FrameHeader:
        """Parse and type-check a header (every field a later stage relies on), or raise HeaderError."""
        try:
            d = json.loads(bytes(data))
            if not isinstance(d, dict):
                raise HeaderError("malformed frame header: not a JSON object")
            if d.get("v") != HEADER_VERSION:
                raise HeaderError(f"frame header version {d.get('v')!r} (expected {HEADER_VERSION})")
            kind, stream, dtype, extra = d["k"], d["st"], d["dt"], d.get("x", {})
            if not (isinstance(kind, str) and isinstance(stream, str) and isinstance(dtype, str)):
                raise HeaderError("malformed frame header: kind, stream and dtype must be strings")
            if not isinstance(extra, dict):
                raise HeaderError("malformed frame header: extra is not an object")
            parts = []
            for n, shp, t in d.get("p", []):
                if not (isinstance(n, str) and isinstance(t, str)):
                    raise HeaderError(f"malformed frame header: part {n!r} has no name/dtype strings")
                parts.append(Part(n, _ints(shp, f"part {n!r} shape"), t))
            ring = d.get("rg", [])
            if ring and not (
                isinstance(ring, list)
                and len(ring) in (4, 5)
                and isinstance(ring[0], str)
                and ring[0].startswith("segstream-")
                and all(type(v) is int and v >= 0 for v in ring[1:])
            ):
                raise HeaderError(f"malformed frame header: ring {ring!r} is not [segstream-NAME, 3-4 sizes]")
            want = d.get("w", [])
            if not isinstance(want, list) or not all(w in WANTS for w in want):
                raise HeaderError(f"malformed frame header: want {want!r} names no known map")
            source, link = d.get("so", {}), d.get("ln", {})
            if not isinstance(source, dict) or not all(
                source.get(k) is None
                or (isinstance(source[k], (int, float)) and not isinstance(source[k], bool))
                for k in ("w", "h", "fps", "total")
            ):
                raise HeaderError("malformed frame header: source info is not an object of numbers")
            if not isinstance(link, dict):
                raise HeaderError("malformed frame header: link counters are not an object")
            inp = d.get("in", [])
            if inp and not (isinstance(inp, list) and len(inp) == 2 and isinstance(inp[1], str)):
                raise HeaderError(f"malformed frame header: input {inp!r} is not [shape, dtype]")
            dep = d.get("dp", [])
            if dep and not (
                isinstance(dep, list)
                and len(dep) == 2
                and isinstance(dep[0], list)
                and len(dep[0]) == 2
                and dep[1] in ("<u2", "uint16")
            ):
                raise HeaderError(f"malformed frame header: depth {dep!r} is not [[H, W], uint16]")
            tiles = d.get("tl")
            if tiles is not None and (isinstance(tiles, bool) or not isinstance(tiles, (int, float))):
                raise HeaderError(f"malformed frame header: tile overlap {tiles!r} is not a number")
            gen = d.get("g", 0)
            if type(gen) is not int or gen < 0:
                raise HeaderError(f"malformed frame header: model generation {gen!r} is not a count")
            return cls(
                kind=kind,
                stream=stream,
                seq=int(d["s"]),
                index=int(d["i"]),
                ts={str(k): float(v) for k, v in d["ts"].items()},
                slot=int(d["sl"]),
                shape=_ints(d["sh"], "shape"),
                dtype=dtype,
                drops=_counts(d.get("dr", {})),
                parts=parts,
                ring=tuple(ring),
                want=tuple(want),
                source=source,
                link=link,
                input=(_ints(inp[0], "input shape"), inp[1]) if inp else (),
                depth=(_ints(dep[0], "depth shape"), dep[1]) if dep else (),
                tiles=float(tiles) if tiles is not None else None,
                infer_size=_ints(d.get("is", []), "infer size"),
                gen=gen,
                extra=extra,
            )
        except HeaderError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
            raise HeaderError(f"malformed frame header: {e}") from None


MAX_URI = 1024  # characters of a source URI carried into mask headers and pages


def infer_size_of(header: FrameHeader) -> tuple[int, int] | None:
    """The (w, h) the preprocess stage resized this frame to under --adaptive; None otherwise (or when
    the value is not two positive integers: never worth dropping a frame for)."""
    v = header.infer_size
    if len(v) == 2 and all(type(x) is int and x > 0 for x in v):
        return int(v[0]), int(v[1])
    return None


def link_of(header: FrameHeader) -> dict[str, Any]:
    """A live source's link counters from a frame header (capture's ``link`` and the source URI),
    checked and reduced to what the mask header and the live view show; {} when there are none. Never
    raises: the results port may carry anything, and counters are not worth dropping a frame for."""
    link, src = header.link, header.source
    if not link:
        return {}
    out: dict[str, Any] = {}
    for key in ("reconnects", "outages"):
        v = link.get(key)
        if type(v) is int and v >= 0:
            out[key] = v
    v = link.get("outage_s")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf"):
        out["outage_s"] = round(float(v), 3)
    if isinstance(link.get("down"), bool):
        out["down"] = link["down"]
    if isinstance(src, dict) and isinstance(src.get("uri"), str):
        out["uri"] = src["uri"][:MAX_URI]
    return out


def encode(header: FrameHeader, arrays: dict[str, np.ndarray] | None = None) -> list:
    """Header + inline arrays -> multipart frames (arrays go out without a copy where contiguous)."""
    header.parts = []
    frames: list = [b""]
    for name, arr in (arrays or {}).items():
        arr = np.ascontiguousarray(arr)
        header.parts.append(Part(name, tuple(arr.shape), arr.dtype.str))
        frames.append(memoryview(arr).cast("B") if arr.size else b"")
    frames[0] = header.to_bytes()
    return frames


def decode(frames: list) -> tuple[FrameHeader, dict[str, np.ndarray]]:
    """Multipart frames -> header + arrays (views on the received buffers, no copy)."""
    if not frames:
        raise HeaderError("empty message")
    header = FrameHeader.from_bytes(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
    if len(frames) - 1 != len(header.parts):
        raise HeaderError(f"header names {len(header.parts)} parts, message has {len(frames) - 1}")
    arrays = {}
    for part, fr in zip(header.parts, frames[1:], strict=True):
        buf = fr.buffer if hasattr(fr, "buffer") else fr
        try:
            dt = np.dtype(part.dtype)
        except TypeError:
            raise HeaderError(f"part {part.name!r}: unknown dtype {part.dtype!r}") from None
        if dt.hasobject or any(d < 0 for d in part.shape):
            raise HeaderError(f"part {part.name!r}: dtype {part.dtype!r} shape {part.shape} is not an array")
        expected = int(np.prod(part.shape, dtype=object)) * dt.itemsize  # no int64 wrap-around
        if len(buf) != expected:
            raise HeaderError(f"part {part.name!r}: {len(buf)} bytes, shape {part.shape} needs {expected}")
        try:
            arrays[part.name] = np.frombuffer(buf, dtype=dt).reshape(part.shape)
        except ValueError as e:  # e.g. a zero-size dtype
            raise HeaderError(f"part {part.name!r}: {e}") from None
    return header, arrays
