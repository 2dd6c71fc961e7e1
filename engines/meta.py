"""Model and class-table metadata that travels inside every model file.

One JSON document (key ``segstream.meta`` in ONNX metadata, in the engine file header, in the
PyTorch checkpoint) is enough to run a model and to colorize its output.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import SegstreamError

META_KEY = "segstream.meta"
META_VERSION = 1


class MetadataError(SegstreamError, ValueError):
    """A class table or model metadata document is malformed."""


@dataclass(frozen=True)
class ClassTable:
    """Class names, RGB palette and the ignored label id (None when every id is a class)."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB, one per class
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        if not self.names:
            raise MetadataError("class table: 'names' is empty")
        if len(self.palette) != len(self.names):
            raise MetadataError(
                f"class table: {len(self.names)} names but {len(self.palette)} palette colours"
            )
        for i, c in enumerate(self.palette):
            if len(c) != 3 or any(not (0 <= int(v) <= 255) for v in c):
                raise MetadataError(f"class table: palette[{i}] = {list(c)} is not an RGB triple 0-255")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
        }

    def digest(self) -> str:
        """Short stable digest of the table: subscribers compare it to know their cached table is current."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassTable:
        """Accepts our own form and the CamVid ``classes.json`` form (names + palette_rgb or classes[])."""
        try:
            if "names" in d and ("palette" in d or "palette_rgb" in d):
                names = list(d["names"])
                palette = list(d.get("palette") or d["palette_rgb"])[: len(names)]
            elif "classes" in d:
                items = sorted(d["classes"], key=lambda c: int(c["id"]))
                names = [c["name"] for c in items]
                palette = [c.get("color_rgb") or c.get("color") for c in items]
            else:
                raise MetadataError("class table needs 'names' and 'palette' (or 'classes')")
            ignore = d.get("ignore_index")
            return cls(
                names=tuple(str(n) for n in names),
                palette=tuple(tuple(int(v) for v in c) for c in palette),
                ignore_index=None if ignore is None else int(ignore),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, MetadataError):
                raise
            raise MetadataError(f"class table: malformed ({e})") from e

    @classmethod
    def from_json_file(cls, path: str | Path) -> ClassTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MetadataError(f"class table file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise MetadataError(f"class table file {path} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def lut_bgr(self):
        """256x1x3 uint8 BGR lookup table for cv2.LUT colorizing (ids beyond the table -> black)."""
        import numpy as np

        lut = np.zeros((256, 1, 3), np.uint8)
        for i, (r, g, b) in enumerate(self.palette):
            lut[i, 0] = (b, g, r)
        return lut


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to run a model file and interpret its output."""

    arch: str
    classes: ClassTable
    input_size: tuple[int, int]  # (width, height) the model was trained/exported for
    channels: int = 3
    # Normalization applied to RGB pixels scaled to [0, 1]: (x - mean) / std
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    max_batch: int = 8
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = META_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["classes"] = self.classes.to_dict()
        d["input_size"] = list(self.input_size)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMeta:
        try:
            d = json.loads(text)
            return cls(
                arch=str(d["arch"]),
                classes=ClassTable.from_dict(d["classes"]),
                input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
                channels=int(d.get("channels", 3)),
                mean=tuple(float(v) for v in d.get("mean", (0.485, 0.456, 0.406))),
                std=tuple(float(v) for v in d.get("std", (0.229, 0.224, 0.225))),
                max_batch=int(d.get("max_batch", 8)),
                extra=dict(d.get("extra", {})),
                version=int(d.get("version", META_VERSION)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            if isinstance(e, MetadataError):
                raise
            raise MetadataError(f"model metadata is malformed: {e}") from e
