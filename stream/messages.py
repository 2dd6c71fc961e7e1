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
import struct
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
# coco-rle / polygons: the payload is a JSON segments document (stream/maskcodec/segments.py)
SEGMENT_ENCODINGS = ("coco-rle", "polygons")
MASK_ENCODINGS = ("raw", "png", "rle", *SEGMENT_ENCODINGS)
CONFIDENCE_ENCODINGS = ("raw", "png")
#: optional uncertainty planes (engines.calibration; uint8 like confidence): entropy / ln C * 255 and
#: top-1 minus top-2 probability * 255, each a part named after the map, encoded raw|png
UNCERTAINTY_MAPS = ("entropy", "margin")
#: RGB-D runs (zmq-pub ``?depth=raw|png``): the paired depth image, uint16 mm (0 = no measurement) at the
#: mask's size, little-endian raw or a 16-bit grey PNG
DEPTH_ENCODINGS = ("raw", "png")
# One RLE run: uint32 little-endian run length, then the uint8 class id (5 bytes, packed).
RLE_DTYPE = np.dtype([("length", "<u4"), ("value", "u1")])
CLASSES_REQUEST = b"classes"


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts before it allocates anything (docs/PROTOCOL.md section 11).

    A header is checked against these before a payload is decoded, so a 5-byte RLE message cannot
    announce a 32768x32768 mask, nor a JSON header nest deep enough to exhaust the parser's stack."""

    max_header_bytes: int = 64 * 1024
    max_depth: int = 8  # JSON nesting; a real header nests 3 deep (parts -> list -> object)
    max_side: int = 16384
    max_pixels: int = 7680 * 4320  # 8K UHD: 33 MB per raw mask or confidence plane
    max_parts: int = 16  # optional parts after the mask
    max_stream_bytes: int = 256

    @property
    def max_frame_bytes(self) -> int:
        """Largest single ZeroMQ frame a client needs (ZMQ_MAXMSGSIZE): a raw plane or a JPEG at the
        maximum size, with room for a JPEG that compresses worse than raw."""
        return 2 * self.max_pixels + (1 << 20)


LIMITS = Limits()
MAX_SIDE = LIMITS.max_side


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
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # 'entropy'/'margin' (H, W) uint8, if sent
    segments: dict[str, Any] | None = None  # the JSON document of a coco-rle / polygons payload
    depth: np.ndarray | None = None  # (H, W) uint16 mm, 0 = no measurement (RGB-D runs, ?depth=raw|png)
    received: float = field(default_factory=time.time)
    size: int = 0  # bytes on the wire, all parts

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    @property
    def entropy(self) -> np.ndarray | None:
        """Softmax entropy / ln C * 255 per pixel (0 = certain), when the publisher sent it."""
        return self.maps.get("entropy")

    @property
    def margin(self) -> np.ndarray | None:
        """Top-1 minus top-2 class probability * 255 per pixel (low = unsure), when sent."""
        return self.maps.get("margin")

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
    if runs.size and not runs["length"].all():
        raise MessageError("malformed", "RLE run of length 0 (every run covers at least 1 pixel)")
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_decode(payload: bytes | memoryview, width: int, height: int, what: str) -> np.ndarray:
    import cv2

    # the IHDR chunk first: its size, depth, colour type and interlace are checked before the decoder
    # allocates anything (a tiny PNG may announce a huge image)
    head = bytes(payload[:29])
    expected = PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR" + struct.pack(">II", width, height) + b"\x08\x00"
    if len(head) < 29 or head[:26] != expected or head[26:29] != b"\x00\x00\x00":
        raise MessageError(
            "malformed", f"{what} part is not a {width}x{height} 8-bit grayscale non-interlaced PNG"
        )
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.shape != (height, width):
        raise MessageError("malformed", f"{what} part is not a {width}x{height} 8-bit grayscale PNG")
    return img


def encode_depth(depth: np.ndarray, encoding: str) -> bytes:
    """(H, W) uint16 mm -> little-endian raw bytes or a 16-bit grey PNG."""
    if encoding == "raw":
        return np.ascontiguousarray(depth, dtype="<u2").tobytes()
    if encoding == "png":
        import cv2

        img = np.ascontiguousarray(depth, np.uint16)
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise MessageError("malformed", "PNG encoding of the depth part failed")
        return buf.tobytes()
    raise MessageError("malformed", f"depth encoding {encoding!r} is unknown (expected {DEPTH_ENCODINGS})")


def decode_depth(payload: bytes | memoryview, encoding: str, width: int, height: int) -> np.ndarray:
    """A depth part -> (H, W) uint16 mm; sizes are checked before anything is decoded."""
    if encoding == "raw":
        if len(payload) != 2 * width * height:
            n = 2 * width * height
            raise MessageError(
                "truncated", f"depth part has {len(payload)} bytes, expected {width}x{height}x2={n}"
            )
        return np.frombuffer(payload, "<u2").reshape(height, width).astype(np.uint16, copy=False)
    if encoding == "png":
        import cv2

        head = bytes(payload[:29])  # IHDR first: size, 16 bits, grey, not interlaced
        expected = PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR" + struct.pack(">II", width, height) + b"\x10\x00"
        if len(head) < 29 or head[:26] != expected or head[26:29] != b"\x00\x00\x00":
            raise MessageError("malformed", f"depth part is not a {width}x{height} 16-bit grayscale PNG")
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None or img.dtype != np.uint16 or img.shape != (height, width):
            raise MessageError("malformed", f"depth part is not a {width}x{height} 16-bit grayscale PNG")
        return img
    raise MessageError("malformed", f"depth encoding {encoding!r} is unknown")


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding it; None when it is not a JPEG."""
    buf = bytes(data[: 1 << 16])  # the frame header sits in the first few kB of any real JPEG
    if buf[:3] != b"\xff\xd8\xff":
        return None
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 9 > len(buf):
                return None
            h, w = struct.unpack(">HH", buf[i + 5 : i + 9])
            return w, h
        if length < 2:
            return None
        i += 2 + length
    return None


def encode_mask(
    mask: np.ndarray, encoding: str, segments: Mapping[str, Any] | None = None
) -> bytes | memoryview:
    """The mask payload; ``segments`` are the options of the coco-rle / polygons encodings
    (components, tolerance, fill, skip: see stream.maskcodec.segments.encode)."""
    if encoding in SEGMENT_ENCODINGS:
        from stream.maskcodec.segments import encode_json

        # the document's compact JSON, byte for byte; polygons written without building it
        return encode_json(np.asarray(mask, dtype=np.uint8), encoding, **dict(segments or {}))
    if encoding == "raw":
        # memoryview: zmq sends it without another copy (send_multipart(copy=False))
        return memoryview(np.ascontiguousarray(mask, dtype=np.uint8)).cast("B")
    if encoding == "rle":
        return rle_encode(mask)
    if encoding == "png":
        return _png_encode(np.ascontiguousarray(mask, dtype=np.uint8))
    raise MessageError("malformed", f"unknown mask encoding {encoding!r} (expected {MASK_ENCODINGS})")


def decode_segments(
    payload: bytes | memoryview, encoding: str, width: int, height: int, limits: Limits | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """A coco-rle / polygons payload -> (class-id mask, its segments document); MessageError."""
    from stream.maskcodec.segments import SegmentsError, decode

    lim = limits or LIMITS
    # the document may be large (polygons of a 4K frame) but never deep: 7 levels at most
    doc = _parse_json_object(
        payload, "segments payload", Limits(max_header_bytes=lim.max_frame_bytes, max_depth=lim.max_depth)
    )
    try:
        return decode(doc, width, height, encoding), doc
    except SegmentsError as e:
        raise MessageError("malformed", f"{encoding} payload: {e}") from None


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
    if encoding in SEGMENT_ENCODINGS and what == "mask":
        return decode_segments(payload, encoding, width, height)[0]
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
    segments: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    maps: Mapping[str, np.ndarray] | None = None,
    infer_size: tuple[int, int] | None = None,
    maps_encoding: str = "raw",
    depth: np.ndarray | None = None,
    depth_encoding: str = "raw",
) -> list[bytes | memoryview]:
    """Build the multipart message. ``timestamps`` are time.time() seconds by stage name;
    ``segments``: options of the coco-rle / polygons encodings (components, tolerance); ``maps``:
    uncertainty planes by name (UNCERTAINTY_MAPS), each one more part, after confidence; ``depth``:
    (H, W) uint16 mm at the mask's size, one more part after the maps (DEPTH_ENCODINGS)."""
    if mask.ndim != 2:
        raise MessageError("malformed", f"mask must be (H, W), got shape {mask.shape}")
    height, width = mask.shape
    seg_opts = dict(segments or {})
    if encoding == "polygons" and classes.ignore_index is not None:
        # pixels no simplified polygon covers decode as "no class", and the ignore id needs no polygons
        seg_opts.setdefault("fill", classes.ignore_index)
        seg_opts.setdefault("skip", (classes.ignore_index,))
    payload = encode_mask(mask, encoding, seg_opts)
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
    for name, plane in (maps or {}).items():
        if name not in UNCERTAINTY_MAPS:
            raise MessageError("malformed", f"unknown map {name!r} (expected one of {UNCERTAINTY_MAPS})")
        if plane.shape != mask.shape or plane.dtype != np.uint8:
            raise MessageError("malformed", f"{name} map {plane.dtype} {plane.shape} != uint8 {mask.shape}")
        if maps_encoding not in CONFIDENCE_ENCODINGS:
            raise MessageError("malformed", f"unknown {name} encoding {maps_encoding!r}")
        extra.append(encode_mask(plane, maps_encoding))
        parts.append({"name": name, "encoding": maps_encoding, "bytes": len(extra[-1])})
    if depth is not None:
        if depth.shape != mask.shape or depth.dtype != np.uint16:
            raise MessageError("malformed", f"depth {depth.dtype} {depth.shape} != uint16 {mask.shape}")
        extra.append(encode_depth(depth, depth_encoding))
        parts.append({"name": "depth", "encoding": depth_encoding, "bytes": len(extra[-1])})
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
    if source:  # live sources: uri (password redacted), reconnects, outages, outage_s, down
        header["source"] = dict(source)
    if infer_size is not None:  # --adaptive: the model input size this mask was inferred at
        header["infer_size"] = [int(infer_size[0]), int(infer_size[1])]
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


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, giving up past ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _parse_json_object(raw: bytes | memoryview, what: str, limits: Limits) -> dict[str, Any]:
    if len(raw) > limits.max_header_bytes:
        raise MessageError("malformed", f"{what} has {len(raw)} bytes (limit {limits.max_header_bytes})")
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MessageError("malformed", f"{what} is not JSON ({e})") from None
    except RecursionError:  # nesting past the parser's stack: hostile, never a real header
        raise MessageError("malformed", f"{what} nests deeper than {limits.max_depth} levels") from None
    if not isinstance(doc, dict):
        raise MessageError("malformed", f"{what} is not a JSON object")
    if _depth(doc, limits.max_depth) > limits.max_depth:
        raise MessageError("malformed", f"{what} nests deeper than {limits.max_depth} levels")
    return doc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_HEX = frozenset("0123456789abcdef")


def decode_header(raw: bytes | memoryview, limits: Limits = LIMITS) -> dict[str, Any]:
    """Parse and check a mask header against the protocol and ``limits``; raises MessageError."""
    header = _parse_json_object(raw, "header", limits)
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

    def bad(detail: str) -> MessageError:
        return MessageError("malformed", f"seq {header['seq']}: {detail}")

    if not 0 < len(header["stream"].encode()) <= limits.max_stream_bytes:
        raise bad(f"stream id must be 1-{limits.max_stream_bytes} bytes")
    if header["seq"] < 0 or header["frame_index"] < 0:
        raise bad(f"seq and frame_index must be >= 0 (frame_index {header['frame_index']})")
    w, h = header["width"], header["height"]
    if not (0 < w <= limits.max_side and 0 < h <= limits.max_side) or w * h > limits.max_pixels:
        raise bad(f"size {w}x{h} out of range (limits: side {limits.max_side}, {limits.max_pixels} pixels)")
    if header["encoding"] not in MASK_ENCODINGS:
        raise bad(f"mask encoding {header['encoding']!r} is unknown")
    if header["mask_bytes"] < 0:
        raise bad("mask_bytes < 0")
    if not 1 <= header["num_classes"] <= 256:
        raise bad(f"num_classes {header['num_classes']} outside 1..256")
    digest = header["classes_digest"]
    if len(digest) != 16 or not set(digest) <= _HEX:
        raise bad("classes_digest is not 16 lowercase hex digits")
    ts = header["timestamps"]
    if not all(v is None or _is_number(v) for v in ts.values()) or not _is_number(ts.get("publish")):
        raise bad("timestamps must be numbers (or null), publish always present")
    if not all(_is_int(v) and v >= 0 for v in header["drops"].values()):
        raise bad("drops must be integers >= 0")
    src = header.get("source")
    if src is not None and not (
        isinstance(src, dict)
        and all(_is_int(src.get(k, 0)) and src.get(k, 0) >= 0 for k in ("reconnects", "outages"))
        and _is_number(src.get("outage_s", 0))
        and src.get("outage_s", 0) >= 0
        and isinstance(src.get("down", False), bool)
        and isinstance(src.get("uri", ""), str)
    ):
        raise bad("source must be an object: reconnects, outages integers >= 0, outage_s >= 0, down, uri")
    size = header.get("infer_size")
    if size is not None and not (
        isinstance(size, list)
        and len(size) == 2
        and all(_is_int(v) and 0 < v <= limits.max_side for v in size)
    ):
        raise bad("infer_size must be [width, height], integers 1..16384")
    if len(header["parts"]) > limits.max_parts:
        raise bad(f"{len(header['parts'])} optional parts (limit {limits.max_parts})")
    for p in header["parts"]:
        if not (
            isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and isinstance(p.get("encoding"), str)
            and _is_int(p.get("bytes"))
            and p["bytes"] >= 0
        ):
            raise bad("header 'parts' entries need 'name', 'encoding' and 'bytes' >= 0")
    return header


def check_message(frames: Sequence[bytes | memoryview], limits: Limits = LIMITS) -> dict[str, Any]:
    """The header of a mask message whose framing, header and part sizes are valid (MessageError
    otherwise), without decoding any payload: cheap enough for every message, even skipped ones."""
    if len(frames) < 3:
        raise MessageError("truncated", f"{len(frames)} parts, expected at least 3 (topic, header, mask)")
    header = decode_header(frames[1], limits)
    if bytes(frames[0]) != header["stream"].encode():
        raise MessageError(
            "malformed", f"topic {bytes(frames[0])[:40]!r} != header stream {header['stream']!r}"
        )
    parts = header["parts"]
    seq = header["seq"]
    if len(frames) < 3 + len(parts):
        raise MessageError("truncated", f"{len(frames)} parts, header announces {3 + len(parts)}")
    if len(frames) > 3 + len(parts):  # never a cut-off message: someone added parts it did not announce
        raise MessageError("malformed", f"seq {seq}: {len(frames)} parts, header announces {3 + len(parts)}")
    if len(frames[2]) != header["mask_bytes"]:
        raise MessageError(
            "truncated",
            f"seq {seq}: mask part has {len(frames[2])} bytes, header says {header['mask_bytes']}",
        )
    for spec, payload in zip(parts, frames[3:], strict=True):
        if len(payload) != spec["bytes"]:
            raise MessageError(
                "truncated",
                f"seq {seq}: {spec['name']} part has {len(payload)} bytes, header says {spec['bytes']}",
            )
    return header


def decode_mask_message(frames: Sequence[bytes | memoryview], limits: Limits = LIMITS) -> MaskMessage:
    """Decode a received multipart message; raises MessageError (malformed/truncated/version).

    Every size is checked against the header and ``limits`` before anything is decoded. Class ids
    are checked against the class table by ``check_class_ids`` (the header alone cannot say which id
    is the table's ignore index)."""
    header = check_message(frames, limits)
    parts = header["parts"]
    seq = header["seq"]
    w, h = header["width"], header["height"]
    doc = None
    if header["encoding"] in SEGMENT_ENCODINGS:
        mask, doc = decode_segments(frames[2], header["encoding"], w, h, limits)
    else:
        mask = decode_plane(frames[2], header["encoding"], w, h, "mask")
    msg = MaskMessage(header=header, mask=mask, size=sum(len(f) for f in frames), segments=doc)
    for spec, payload in zip(parts, frames[3:], strict=True):
        if spec["name"] == "confidence":
            if spec["encoding"] not in CONFIDENCE_ENCODINGS:
                raise MessageError("malformed", f"seq {seq}: confidence encoding {spec['encoding']!r}")
            msg.confidence = decode_plane(payload, spec["encoding"], w, h, "confidence")
        elif spec["name"] in UNCERTAINTY_MAPS:
            if spec["encoding"] not in CONFIDENCE_ENCODINGS:
                raise MessageError("malformed", f"seq {seq}: {spec['name']} encoding {spec['encoding']!r}")
            msg.maps[spec["name"]] = decode_plane(payload, spec["encoding"], w, h, spec["name"])
        elif spec["name"] == "depth":
            if spec["encoding"] not in DEPTH_ENCODINGS:
                raise MessageError("malformed", f"seq {seq}: depth encoding {spec['encoding']!r}")
            msg.depth = decode_depth(payload, spec["encoding"], w, h)
        elif spec["name"] == "overlay" and spec["encoding"] == "jpeg":
            size = jpeg_size(payload)
            if size != (w, h):
                what = "not a JPEG image" if size is None else f"a {size[0]}x{size[1]} JPEG"
                raise MessageError("malformed", f"seq {seq}: overlay part is {what}, expected {w}x{h}")
            msg.overlay_jpeg = bytes(payload)
        # unknown optional parts are skipped: newer publishers may add parts within a version
    return msg


def check_class_ids(msg: MaskMessage, classes: ClassTable) -> None:
    """Every id must be < num_classes or the table's ignore index (MessageError otherwise), and the
    header's num_classes must be the table's."""
    if msg.header["num_classes"] != classes.num_classes:
        raise MessageError(
            "malformed",
            f"seq {msg.seq}: num_classes {msg.header['num_classes']} != class table's {classes.num_classes}",
        )
    top = int(msg.mask.max())
    if top < classes.num_classes:
        return
    bad = msg.mask >= classes.num_classes
    if classes.ignore_index is not None:
        bad &= msg.mask != classes.ignore_index
    if bad.any():
        first = int(msg.mask[bad][0])
        raise MessageError(
            "malformed", f"seq {msg.seq}: class id {first} >= num_classes {classes.num_classes} (not ignore)"
        )


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


def decode_classes_reply(raw: bytes, limits: Limits = LIMITS) -> ClassTable:
    """The class table from a reply; MessageError when it is unreadable or its digest does not match."""
    doc = _parse_json_object(raw, "class-table reply", limits)
    if doc.get("kind") != KIND_CLASSES or doc.get("version") != PROTOCOL_VERSION:
        raise MessageError(
            "version", f"class-table reply kind/version {doc.get('kind')!r}/{doc.get('version')!r}"
        )
    try:
        table = ClassTable.from_dict(doc["classes"])
    except (AttributeError, KeyError, TypeError, ValueError, MetadataError) as e:
        raise MessageError("malformed", f"class-table reply unreadable ({e})") from None
    if not 1 <= table.num_classes <= 256:
        raise MessageError("malformed", f"class table has {table.num_classes} classes (1..256)")
    if table.digest() != doc.get("digest"):
        raise MessageError("malformed", "class-table reply digest does not match its table")
    return table


# ------------------------------------------------------------------------------------- end of stream

KIND_END = "segstream.end"


def encode_end_message(stream: str, last_seq: int, frames: int, reason: str | None = None) -> list[bytes]:
    """Sent once when the publisher closes, so recorders know the stream is complete; with ``reason``
    to one recorder that is being dropped (its recording ends there, incomplete)."""
    head: dict[str, Any] = {
        "kind": KIND_END,
        "version": PROTOCOL_VERSION,
        "stream": stream,
        "last_seq": int(last_seq),
        "frames": int(frames),
        "timestamps": {"publish": time.time()},
    }
    if reason is not None:
        head["reason"] = reason
    return [stream.encode(), json.dumps(head, separators=(",", ":")).encode()]


def end_header(frames: Sequence[bytes | memoryview]) -> dict[str, Any] | None:
    """The header of an end-of-stream message, or None when ``frames`` is something else."""
    if len(frames) != 2:
        return None
    try:
        head = _parse_json_object(frames[1], "end message", LIMITS)
    except MessageError:
        return None
    if head.get("kind") == KIND_END and head.get("version") == PROTOCOL_VERSION:
        return head
    return None


# ---------------------------------------------------------------------------------- endpoint layout


@dataclass(frozen=True)
class Endpoints:
    """Where one mask stream lives: PUB (lossy) on ``port``, the class table (REP) on ``classes_port``,
    the lossless recorder endpoint (ROUTER with credit) on ``lossless_port`` (None = off).

    ``lossless_port`` is where a client looks for recorders (PORT+2 unless the spec says otherwise);
    a publisher binds it only when ``lossless_requested`` (``lossless=on|PORT`` in its spec): an
    endpoint nobody asked for is one more way in."""

    host: str
    port: int
    classes_port: int
    lossless_port: int | None
    options: dict[str, str]
    lossless_requested: bool = False

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


_OFF = ("off", "no", "0", "false")
_ON = ("on", "yes", "1", "true")


def parse_endpoint(spec: str, *, default_host: str = "127.0.0.1") -> Endpoints:
    """``[zmq-pub://|tcp://]HOST:PORT[?classes=P&lossless=on|P|off&...]`` -> Endpoints.

    Defaults: classes on PORT+1; the lossless endpoint is PORT+2 (``lossless=on``) or P, and is
    requested only when the spec names it. Unknown options are kept for the caller."""
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
        ll = opts.pop("lossless", None)
        requested = ll is not None and ll.lower() not in _OFF
        if ll is not None and ll.lower() in _OFF:
            lossless_port = None
        elif ll is None or ll.lower() in _ON:
            lossless_port = port + 2
        else:
            lossless_port = int(ll)
    except ValueError as e:
        raise SegstreamError(
            f"mask endpoint {spec!r}: {e} (expected e.g. zmq-pub://127.0.0.1:5555)"
        ) from None
    for p in (port, classes_port, lossless_port or 1):
        if not 0 < p < 65536:
            raise SegstreamError(f"mask endpoint {spec!r}: port {p} out of range")
    return Endpoints(host, port, classes_port, lossless_port, opts, requested)
