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


class HeaderError(SegstreamError, ValueError):
    """A message on the wire is not a segstream frame message."""


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
        if self.parts:
            d["p"] = [[p.name, list(p.shape), p.dtype] for p in self.parts]
        if self.extra:
            d["x"] = self.extra
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> FrameHeader:
        try:
            d = json.loads(bytes(data))
            if d.get("v") != HEADER_VERSION:
                raise HeaderError(f"frame header version {d.get('v')!r} (expected {HEADER_VERSION})")
            return cls(
                kind=d["k"],
                stream=d["st"],
                seq=int(d["s"]),
                index=int(d["i"]),
                ts={k: float(v) for k, v in d["ts"].items()},
                slot=int(d["sl"]),
                shape=tuple(d["sh"]),
                dtype=d["dt"],
                drops=dict(d.get("dr", {})),
                parts=[Part(n, tuple(s), t) for n, s, t in d.get("p", [])],
                extra=dict(d.get("x", {})),
            )
        except HeaderError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise HeaderError(f"malformed frame header: {e}") from None


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
        dt = np.dtype(part.dtype)
        expected = int(np.prod(part.shape, dtype=np.int64)) * dt.itemsize
        if len(buf) != expected:
            raise HeaderError(f"part {part.name!r}: {len(buf)} bytes, shape {part.shape} needs {expected}")
        arrays[part.name] = np.frombuffer(buf, dtype=dt).reshape(part.shape)
    return header, arrays
