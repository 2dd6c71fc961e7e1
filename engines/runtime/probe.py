"""What a model file says about itself, read without loading it.

The pipeline's supervisor needs a model's metadata (classes, input size, max batch) to lay out the ring and
configure stages; building an inference session for that costs an ONNX Runtime import and a graph
optimization (≈ 0.15-0.2 s here) that the infer stage then repeats. An ONNX file is one protobuf
``ModelProto`` whose ``metadata_props`` (field 14) are short strings beside the large ``graph`` (field 7),
so walking the top-level fields and skipping the rest by length reads the metadata in about a millisecond,
without importing ``onnx`` (≈ 60 ms) or ``onnxruntime`` (≈ 130 ms).
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

from engines.meta import META_KEY, MetadataError, ModelMeta
from engines.runtime.base import ModelFileError

_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {1: key, 2: value}


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int = 0, end: int | None = None):
    """(field number, wire type, value) of one protobuf message: ints for varints, (start, end) spans for
    length-delimited fields; fixed-size fields are skipped."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("field runs past the end")
            yield number, wire, (pos, pos + n)
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("message runs past the end")


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict; ModelFileError when the file is not an ONNX model."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            props: dict[str, str] = {}
            seen_graph = False
            for number, wire, value in _fields(buf):
                seen_graph |= number == 7 and wire == 2
                if number == _METADATA_PROPS and wire == 2:
                    entry = {n: bytes(buf[a:b]).decode() for n, w, (a, b) in _fields(buf, *value) if w == 2}
                    props[entry.get(1, "")] = entry.get(2, "")
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except (ValueError, UnicodeDecodeError, TypeError) as e:  # mmap of an empty file is ValueError too
        from engines.runtime.contract import describe_file

        what = describe_file(path)  # "is a JPEG image", "is empty (0 bytes)": plainer than the parser
        why = f": the file {what}" if what else f" (truncated or corrupt? {e})"
        raise ModelFileError(f"{path}: not a loadable ONNX model{why}") from None
    if not seen_graph:
        raise ModelFileError(f"{path}: not a loadable ONNX model (no graph)")
    return props


def probe(path: str | Path) -> dict[str, Any] | None:
    """{"meta": json, "wants_uint8", "max_batch", "backend"} for an ONNX model, read from the file alone;
    None for other model kinds (their metadata sits in formats only their backend reads)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        return None
    props = onnx_metadata(path)
    if META_KEY not in props:
        raise ModelFileError(
            f"{path}: no '{META_KEY}' metadata; export it with `segstream export` "
            "(the model's classes and normalization travel in that entry)"
        )
    try:
        meta = ModelMeta.from_json(props[META_KEY])
    except MetadataError as e:
        raise ModelFileError(f"{path}: {e}") from None
    from engines.runtime.contract import check_onnx_file

    check_onnx_file(path, meta)  # a model that breaks the contract stops here, before any stage starts
    return {
        "meta": meta.to_json(),
        "wants_uint8": False,
        "max_batch": meta.max_batch,
        "backend": "onnxruntime",
    }
