"""COCO JSON files of segments documents: one file per frame, or one per run written as it goes.

A per-run file is a COCO dataset (``images``, ``categories``, ``annotations``) that pycocotools'
``COCO()`` loads. It is written incrementally to ``NAME.part`` (annotations first: key order does not
matter in JSON) and renamed when closed, so memory stays flat on a long run and a finished file is
never half written. Polygons keep their holes in ``segstream_polygons``; ``segmentation`` then holds
the exterior rings only (COCO polygons have no holes), which a COCO reader fills.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engines.meta import ClassTable


def categories(classes: ClassTable | None, ids: list[int] | None = None) -> list[dict[str, Any]]:
    if classes is None:
        return [{"id": i, "name": str(i)} for i in (ids or [])]
    return [{"id": i, "name": n} for i, n in enumerate(classes.names)]


def annotations(doc: dict[str, Any], image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of one segments document (ids from ``first_id``)."""
    out = []
    for k, s in enumerate(doc["segments"]):
        ann: dict[str, Any] = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": s["category_id"],
            "area": s["area"],
            "bbox": s["bbox"],
        }
        if doc["format"] == "coco-rle":
            ann["segmentation"] = s["segmentation"]
            ann["iscrowd"] = 0 if doc["components"] else 1  # a class-wide RLE is a "crowd" region in COCO
        else:
            ann["segmentation"] = [p["exterior"] for p in s["polygons"] if len(p["exterior"]) >= 6]
            ann["segstream_polygons"] = s["polygons"]
            ann["iscrowd"] = 0
        out.append(ann)
    return out


def frame_json(
    doc: dict[str, Any], *, frame_index: int, file_name: str | None, classes: ClassTable | None
) -> dict:
    """One frame as a self-contained COCO-style document (the segments document plus COCO keys)."""
    h, w = doc["size"]
    image = {"id": frame_index, "height": h, "width": w, "file_name": file_name or f"{frame_index:06d}"}
    return {
        **doc,
        "images": [image],
        "categories": categories(classes, sorted({s["category_id"] for s in doc["segments"]})),
        "annotations": annotations(doc, frame_index, 1),
    }


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


class RunWriter:
    """One COCO dataset file for a whole run; ``add`` per frame, ``close`` finalizes it."""

    def __init__(self, path: Path, fmt: str, classes: ClassTable | None, params: dict[str, Any]) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.classes = classes
        self.images: list[dict[str, Any]] = []
        self.ids: set[int] = set()
        self.next_id = 1
        self._f = open(self.part, "w")  # noqa: SIM115 - lives until close()
        head = json.dumps({"info": {"description": "segstream masks", "format": fmt, **params}})
        self._f.write(head[:-1] + ',"annotations":[')
        self._first = True

    def add(self, doc: dict[str, Any], *, image_id: int, file_name: str) -> None:
        h, w = doc["size"]
        self.images.append({"id": image_id, "height": h, "width": w, "file_name": file_name})
        for ann in annotations(doc, image_id, self.next_id):
            self._f.write(("" if self._first else ",") + json.dumps(ann, separators=(",", ":")))
            self._first = False
            self.ids.add(ann["category_id"])
            self.next_id += 1

    def close(self) -> Path | None:
        if self._f.closed:
            return None
        tail = {"images": self.images, "categories": categories(self.classes, sorted(self.ids))}
        self._f.write("]," + json.dumps(tail, separators=(",", ":"))[1:])
        self._f.close()
        os.replace(self.part, self.path)
        return self.path
