"""The public mask message: what segstream publishes to subscribers (docs/PROTOCOL.md).

One ZeroMQ multipart message per frame::

    [topic = stream id (UTF-8), header (JSON, UTF-8), mask payload, optional parts...]

The header says how to read everything after it, so a client in any language needs only a JSON
parser, and (for the optional encodings) a PNG/JPEG decoder. The internal stage-to-stage headers
live in stream/headers.py; this module is the outward-facing contract and changes only with
PROTOCOL_VERSION.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.errors import SegstreamError
from engines.meta import ClassTable, MetadataError

PROTOCOL_VERSION = 1
KIND_MASK = "segstream.mask"
KIND_CLASSES = "segstream.classes"
MASK_ENCODINGS = ("raw", "png", "rle")
CONFIDENCE_ENCODINGS = ("raw", "png")
# One RLE run: uint32 little-endian run length, then the uint8 class id (5 bytes, packed).
RLE_DTYPE = np.dtype([("length", "<u4"), ("value", "u1")])
MAX_SIDE = 1 << 15  # refuse absurd sizes from a hostile or corrupt header before allocating
CLASSES_REQUEST = b"classes"


class MessageError(SegstreamError):
    """A received message cannot be decoded. ``reason`` is malformed, truncated or version."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason} message: {detail}")
        self.reason = reason


@dataclass
class MaskMessage:
    """One decoded mask message. ``overlay`` is BGR (as OpenCV gives it); ``classes`` is filled in by
    the subscriber from the class-table endpoint (None when it could not be fetched)."""

    header: dict[str, Any]
    mask: np.ndarray  # (H, W) uint8 class ids
    confidence: np.ndarray | None = None  # (H, W) uint8, max softmax * 255
    overlay_jpeg: bytes | None = None
    classes: ClassTable | None = None
    received: float = field(default_factory=time.time)
    size: int = 0  # bytes on the wire, all parts

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    @property
    def stream(self) -> str:
        return str(self.header["stream"])

    @property
    def overlay(self) -> np.ndarray | None:
        """The overlay JPEG decoded to BGR (decoded on access: most subscribers never look)."""
        if self.overlay_jpeg is None:
            return None
        import cv2

        img = cv2.imdecode(np.frombuffer(self.overlay_jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise MessageError("malformed", f"seq {self.seq}: overlay part is not a JPEG image")
        return img

    @property
    def latency(self) -> float | None:
        """Seconds from capture to reception (None when the publisher did not know the capture time)."""
        cap = self.header["timestamps"].get("capture")
        return None if cap is None else self.received - float(cap)


# ---------------------------------------------------------------------------------------- encoding


def rle_encode(mask: np.ndarray) -> bytes:
    """Row-major runs of equal class ids as packed (uint32 LE length, uint8 value) records."""
    flat = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1)
    if flat.size == 0:
        return b""
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], starts))
    runs = np.empty(starts.size, RLE_DTYPE)
    runs["length"] = np.diff(np.append(starts, flat.size))
    runs["value"] = flat[starts]
    return runs.tobytes()


def rle_decode(payload: bytes | memoryview, width: int, height: int) -> np.ndarray:
    if len(payload) % RLE_DTYPE.itemsize:
        raise MessageError("truncated", f"RLE payload of {len(payload)} bytes is not a multiple of 5")
    runs = np.frombuffer(payload, RLE_DTYPE)
    total = int(runs["length"].sum(dtype=np.uint64))
    if total != width * height:
        raise MessageError("truncated", f"RLE runs cover {total} pixels, header says {width}x{height}")
    return np.repeat(runs["value"], runs["length"]).reshape(height, width)


def _png_encode(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise MessageError("malformed", "PNG encoding failed")
    return buf.tobytes()


def _png_decode(payload: bytes | memoryview, width: int, height: int, what: str) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.shape != (height, width):
        raise MessageError("malformed", f"{what} part is not a {width}x{height} 8-bit grayscale PNG")
    return img


def encode_mask(mask: np.ndarray, encoding: str) -> bytes | memoryview:
    if encoding == "raw":
        # memoryview: zmq sends it without another copy (send_multipart(copy=False))
        return memoryview(np.ascontiguousarray(mask, dtype=np.uint8)).cast("B")
    if encoding == "rle":
        return rle_encode(mask)
    if encoding == "png":
        return _png_encode(np.ascontiguousarray(mask, dtype=np.uint8))
    raise MessageError("malformed", f"unknown mask encoding {encoding!r} (expected {MASK_ENCODINGS})")


def decode_plane(
    payload: bytes | memoryview, encoding: str, width: int, height: int, what: str
) -> np.ndarray:
    """Decode a mask or confidence plane to an (H, W) uint8 array."""
    if encoding == "raw":
        if len(payload) != width * height:
            raise MessageError(
                "truncated",
                f"{what} part has {len(payload)} bytes, expected {width}x{height}={width * height}",
            )
        return np.frombuffer(payload, np.uint8).reshape(height, width)
    if encoding == "rle":
        return rle_decode(payload, width, height)
    if encoding == "png":
        return _png_decode(payload, width, height, what)
    raise MessageError("malformed", f"{what} encoding {encoding!r} is unknown")


def encode_mask_message(
    *,
    stream: str,
    seq: int,
    frame_index: int,
    mask: np.ndarray,
    classes: ClassTable,
    timestamps: Mapping[str, float] | None = None,
    drops: Mapping[str, int] | None = None,
    encoding: str = "raw",
    confidence: np.ndarray | None = None,
    confidence_encoding: str = "raw",
    overlay_jpeg: bytes | None = None,
    publish_time: float | None = None,
) -> list[bytes | memoryview]:
    """Build the multipart message. ``timestamps`` are time.time() seconds by stage name."""
    if mask.ndim != 2:
        raise MessageError("malformed", f"mask must be (H, W), got shape {mask.shape}")
    height, width = mask.shape
    payload = encode_mask(mask, encoding)
    ts = {k: float(v) for k, v in (timestamps or {}).items()}
    ts.setdefault("capture", None)
    ts.setdefault("infer", None)
    ts["publish"] = time.time() if publish_time is None else float(publish_time)
    extra: list[bytes | memoryview] = []
    parts: list[dict[str, Any]] = []
    if confidence is not None:
        if confidence.shape != mask.shape:
            raise MessageError("malformed", f"confidence shape {confidence.shape} != mask shape {mask.shape}")
        if confidence_encoding not in CONFIDENCE_ENCODINGS:
            raise MessageError("malformed", f"unknown confidence encoding {confidence_encoding!r}")
        extra.append(encode_mask(confidence, confidence_encoding))
        parts.append({"name": "confidence", "encoding": confidence_encoding, "bytes": len(extra[-1])})
    if overlay_jpeg is not None:
        extra.append(overlay_jpeg)
        parts.append({"name": "overlay", "encoding": "jpeg", "bytes": len(overlay_jpeg)})
    header = {
        "kind": KIND_MASK,
        "version": PROTOCOL_VERSION,
        "stream": stream,
        "seq": int(seq),
        "frame_index": int(frame_index),
        "timestamps": ts,
        "width": int(width),
        "height": int(height),
        "encoding": encoding,
        "mask_bytes": len(payload),
        "num_classes": classes.num_classes,
        "classes_digest": classes.digest(),
        "drops": {str(k): int(v) for k, v in (drops or {}).items()},
        "parts": parts,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return [stream.encode(), head, payload, *extra]


# ---------------------------------------------------------------------------------------- decoding

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "stream": str,
    "seq": int,
    "frame_index": int,
    "timestamps": dict,
    "width": int,
    "height": int,
    "encoding": str,
    "mask_bytes": int,
    "num_classes": int,
    "classes_digest": str,
    "drops": dict,
    "parts": list,
}


def decode_header(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MessageError("malformed", f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise MessageError("malformed", "header is not a JSON object")
    version = header.get("version")
    if version != PROTOCOL_VERSION:
        raise MessageError(
            "version", f"protocol version {version!r}, this subscriber reads {PROTOCOL_VERSION}"
        )
    for key, typ in _REQUIRED.items():
        value = header.get(key)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise MessageError("malformed", f"header field {key!r} missing or not {typ.__name__}")
    if header["kind"] != KIND_MASK:
        raise MessageError("malformed", f"header kind {header['kind']!r} is not {KIND_MASK!r}")
    w, h = header["width"], header["height"]
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise MessageError("malformed", f"size {w}x{h} out of range")
    if header["encoding"] not in MASK_ENCODINGS:
        raise MessageError("malformed", f"mask encoding {header['encoding']!r} is unknown")
    for p in header["parts"]:
        if not (
            isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("encoding"), str)
        ):
            raise MessageError("malformed", "header 'parts' entries need 'name' and 'encoding'")
    return header


def decode_mask_message(frames: Sequence[bytes | memoryview]) -> MaskMessage:
    """Decode a received multipart message; raises MessageError (malformed/truncated/version)."""
    if len(frames) < 3:
        raise MessageError("truncated", f"{len(frames)} parts, expected at least 3 (topic, header, mask)")
    header = decode_header(frames[1])
    if bytes(frames[0]) != header["stream"].encode():
        raise MessageError(
            "malformed", f"topic {bytes(frames[0])[:40]!r} != header stream {header['stream']!r}"
        )
    parts = header["parts"]
    if len(frames) != 3 + len(parts):
        raise MessageError("truncated", f"{len(frames)} parts, header announces {3 + len(parts)}")
    w, h = header["width"], header["height"]
    mask = decode_plane(frames[2], header["encoding"], w, h, "mask")
    msg = MaskMessage(header=header, mask=mask, size=sum(len(f) for f in frames))
    for spec, payload in zip(parts, frames[3:], strict=True):
        if spec["name"] == "confidence":
            msg.confidence = decode_plane(payload, spec["encoding"], w, h, "confidence")
        elif spec["name"] == "overlay" and spec["encoding"] == "jpeg":
            msg.overlay_jpeg = bytes(payload)
        # unknown optional parts are skipped: newer publishers may add parts within a version
    return msg


# ------------------------------------------------------------------------------ class-table replies


def encode_classes_reply(stream: str, classes: ClassTable) -> bytes:
    return json.dumps(
        {
            "kind": KIND_CLASSES,
            "version": PROTOCOL_VERSION,
            "stream": stream,
            "digest": classes.digest(),
            "classes": classes.to_dict(),
        },
        separators=(",", ":"),
    ).encode()


def decode_classes_reply(raw: bytes) -> ClassTable:
    try:
        doc = json.loads(raw)
        if doc.get("kind") != KIND_CLASSES or doc.get("version") != PROTOCOL_VERSION:
            raise MessageError(
                "version", f"class-table reply kind/version {doc.get('kind')!r}/{doc.get('version')!r}"
            )
        table = ClassTable.from_dict(doc["classes"])
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, MetadataError) as e:
        raise MessageError("malformed", f"class-table reply unreadable ({e})") from None
    if table.digest() != doc.get("digest"):
        raise MessageError("malformed", "class-table reply digest does not match its table")
    return table


# ------------------------------------------------------------------------------------- end of stream

KIND_END = "segstream.end"


def encode_end_message(stream: str, last_seq: int, frames: int) -> list[bytes]:
    """Sent once when the publisher closes, so recorders know the stream is complete."""
    head = {
        "kind": KIND_END,
        "version": PROTOCOL_VERSION,
        "stream": stream,
        "last_seq": int(last_seq),
        "frames": int(frames),
        "timestamps": {"publish": time.time()},
    }
    return [stream.encode(), json.dumps(head, separators=(",", ":")).encode()]


def end_header(frames: Sequence[bytes | memoryview]) -> dict[str, Any] | None:
    """The header of an end-of-stream message, or None when ``frames`` is something else."""
    if len(frames) != 2:
        return None
    try:
        head = json.loads(bytes(frames[1]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(head, dict) and head.get("kind") == KIND_END and head.get("version") == PROTOCOL_VERSION:
        return head
    return None


# ---------------------------------------------------------------------------------- endpoint layout


@dataclass(frozen=True)
class Endpoints:
    """Where one mask stream lives: PUB (lossy) on ``port``, the class table (REP) on ``classes_port``,
    the lossless recorder endpoint (ROUTER with credit) on ``lossless_port`` (None = off)."""

    host: str
    port: int
    classes_port: int
    lossless_port: int | None
    options: dict[str, str]

    def tcp(self, port: int, *, bind: bool = False) -> str:
        host = self.host
        if bind and host in ("0.0.0.0", "::"):
            host = "*"
        if ":" in host and host != "*":
            host = f"[{host}]"
        return f"tcp://{host}:{port}"

    @property
    def all_interfaces(self) -> bool:
        return self.host in ("*", "0.0.0.0", "::")


def parse_endpoint(spec: str, *, default_host: str = "127.0.0.1") -> Endpoints:
    """``[zmq-pub://|tcp://]HOST:PORT[?classes=P&lossless=P|off&...]`` -> Endpoints.

    Defaults: classes on PORT+1, lossless on PORT+2. Unknown options are kept for the caller."""
    from urllib.parse import parse_qsl, urlsplit

    text = spec.strip()
    if "://" not in text:
        text = "tcp://" + text
    try:
        u = urlsplit(text)
        if u.scheme not in ("zmq-pub", "tcp", "zmq-sub"):
            raise ValueError(f"scheme {u.scheme!r} (expected zmq-pub:// or tcp://)")
        host = u.hostname or default_host
        if host == "localhost":
            host = "127.0.0.1"
        if u.netloc.startswith("*"):
            host = "*"
        port = u.port
        if port is None:
            raise ValueError("no port")
        opts = dict(parse_qsl(u.query, keep_blank_values=True))
        classes_port = int(opts.pop("classes", port + 1))
        ll = opts.pop("lossless", str(port + 2))
        lossless_port = None if ll.lower() in ("off", "no", "0", "false") else int(ll)
    except ValueError as e:
        raise SegstreamError(
            f"mask endpoint {spec!r}: {e} (expected e.g. zmq-pub://127.0.0.1:5555)"
        ) from None
    for p in (port, classes_port, lossless_port or 1):
        if not 0 < p < 65536:
            raise SegstreamError(f"mask endpoint {spec!r}: port {p} out of range")
    return Endpoints(host, port, classes_port, lossless_port, opts)
