"""Depth for RGB-D segmentation: reading 16-bit depth PNGs, normalizing them, and RGB-D dataset folders.

Depth images are single-channel 16-bit PNGs in millimetres, 0 = no measurement (the convention of
RealSense, Kinect and the NYU Depth v2 toolbox exports). Two folder layouts are read:

- ours (CamVid-like): ``DIR/images/NAME.jpg|png``, ``DIR/labels/NAME.png``, ``DIR/depth/NAME.png``;
- NYUv2-style: ``DIR/image/NAME.png``, ``DIR/label/NAME.png``, ``DIR/depth/NAME.png`` (singular names;
  ``rgb/`` is accepted for the colour folder).

Normalization (``DepthSpec``, stored in the model metadata under ``extra["depth"]`` so every runtime
feeds depth the way training did): ``d / max_mm`` clipped to [0, 1], then ``(x - mean) / std``;
invalid pixels (0 mm) get the value ``invalid`` *after* normalization (0 = the mean depth by default,
so a hole reads as "no information" rather than as "touching the camera").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.data import IMAGE_SUFFIXES, DatasetError, DatasetNotFound, SegmentationDataset, SizeMismatch
from engines.meta import ClassTable, ModelMeta

COLOR_DIRS = ("images", "image", "rgb")
LABEL_DIRS = ("labels", "label")
DEPTH_DIR = "depth"


@dataclass(frozen=True)
class DepthSpec:
    max_mm: float = 10000.0  # depth scale: 10 m covers indoor RGB-D cameras
    mean: float = 0.5
    std: float = 0.25
    invalid: float = 0.0  # normalized value given to pixels without a measurement

    def __post_init__(self) -> None:
        if self.max_mm <= 0 or self.std <= 0:
            raise DatasetError(f"depth normalization: max_mm {self.max_mm} and std {self.std} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {"unit": "mm", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthSpec:
        return cls(**{k: float(d[k]) for k in ("max_mm", "mean", "std", "invalid") if k in d})

    def normalize(self, depth_mm: np.ndarray) -> np.ndarray:
        """uint16 millimetres (..., H, W) -> float32 normalized, invalid pixels set to ``invalid``."""
        d = depth_mm.astype(np.float32)
        x = (np.clip(d / self.max_mm, 0.0, 1.0) - self.mean) / self.std
        return np.where(depth_mm == 0, np.float32(self.invalid), x).astype(np.float32)


def read_depth(path: str | Path) -> np.ndarray:
    """A 16-bit single-channel PNG in millimetres -> (H, W) uint16; anything else -> DatasetError."""
    path = Path(path)
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if d is None:
        raise DatasetError(f"{path}: depth image not found or not readable")
    if d.ndim != 2 or d.dtype != np.uint16:
        kind = f"{d.dtype}, {1 if d.ndim == 2 else d.shape[2]} channel(s)"
        raise DatasetError(f"{path}: depth must be a single-channel 16-bit PNG in millimetres, got {kind}")
    return d


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def list_triplets(root: str | Path) -> list[tuple[Path, Path, Path]]:
    """(image, label, depth) paths of a folder in either layout, matched by file stem."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFound(f"dataset folder not found: {root}")
    img_dir, lab_dir = _first_dir(root, COLOR_DIRS), _first_dir(root, LABEL_DIRS)
    dep_dir = root / DEPTH_DIR
    if img_dir is None or lab_dir is None or not dep_dir.is_dir():
        raise DatasetNotFound(
            f"{root}: an RGB-D folder needs images/ (or image/, rgb/), labels/ (or label/) and depth/"
        )
    out = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        lab, dep = lab_dir / f"{img.stem}.png", dep_dir / f"{img.stem}.png"
        if not lab.is_file():
            raise DatasetError(f"{img}: no label {lab}")
        if not dep.is_file():
            raise DatasetError(f"{img}: no depth image {dep}")
        out.append((img, lab, dep))
    if not out:
        raise DatasetNotFound(f"{root}: no images found in {img_dir}")
    return out


def load_rgbd(
    root: str | Path,
    size: tuple[int, int] | None = None,
    classes: ClassTable | None = None,
    limit: int | None = None,
) -> SegmentationDataset:
    """Decode an RGB-D folder into a SegmentationDataset with ``depth`` set; ``size`` (w, h) resizes
    images (area/linear), labels and depth (nearest: never invent a class or a depth between two)."""
    from engines.data import find_class_table

    root = Path(root)
    triplets = list_triplets(root)[: limit or None]
    classes = classes or find_class_table(root)
    images, labels, depths = [], [], []
    for img_p, lab_p, dep_p in triplets:
        img = cv2.imread(str(img_p), cv2.IMREAD_COLOR)
        lab = cv2.imread(str(lab_p), cv2.IMREAD_UNCHANGED)
        if img is None or lab is None or lab.ndim != 2 or lab.dtype != np.uint8:
            raise DatasetError(f"{img_p if img is None else lab_p}: not a readable image / 8-bit label")
        dep = read_depth(dep_p)
        if not (img.shape[:2] == lab.shape == dep.shape):
            raise SizeMismatch(
                f"{img_p.stem}: image {img.shape[1]}x{img.shape[0]}, label {lab.shape[1]}x{lab.shape[0]} "
                f"and depth {dep.shape[1]}x{dep.shape[0]} must be the same size"
            )
        top = int(lab.max())
        if top >= classes.num_classes and top != classes.ignore_index:
            raise DatasetError(
                f"{lab_p}: label id {top} outside the class table (0-{classes.num_classes - 1})"
            )
        if size is not None and (img.shape[1], img.shape[0]) != size:
            shrink = size[0] < img.shape[1]
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
            dep = cv2.resize(dep, size, interpolation=cv2.INTER_NEAREST)
        images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        labels.append(lab)
        depths.append(dep)
    if len({d.shape for d in depths}) > 1:
        raise SizeMismatch(f"{root}: RGB-D frames have different sizes; give a common size (--data-size WxH)")
    return SegmentationDataset(
        images=np.stack(images),
        labels=np.stack(labels),
        classes=classes,
        names=[t[0].name for t in triplets],
        roots=[str(root)],
        depth=np.stack(depths),
    )


def load_rgbd_datasets(
    roots: list[str] | tuple[str, ...], size: tuple[int, int] | None = None, limit: int | None = None
) -> SegmentationDataset:
    """Several RGB-D folders merged (same classes and size), like engines.data.load_datasets."""
    return SegmentationDataset.merge([load_rgbd(r, size=size, limit=limit) for r in roots])


@dataclass
class RGBDDataset:
    """A SegmentationDataset plus depth (N, H, W) uint16 millimetres, same order and size."""

    rgb: SegmentationDataset
    depth: np.ndarray

    def __len__(self) -> int:
        return len(self.rgb)

    @classmethod
    def load(cls, root: str | Path, classes: ClassTable | None = None) -> RGBDDataset:
        ds = load_rgbd(root, classes=classes)
        assert ds.depth is not None
        return cls(rgb=ds, depth=ds.depth)


def rgbd_inputs(
    images_rgb_u8: np.ndarray, depth_mm: np.ndarray, mean, std, spec: DepthSpec
) -> dict[str, np.ndarray]:
    """(N,H,W,3) uint8 RGB + (N,H,W) uint16 mm -> the two inputs of an RGB-D model: ``image`` (N,3,H,W)
    float32 normalized RGB and ``depth`` (N,1,H,W) float32 normalized depth (engines.runtime.inputs)."""
    x = images_rgb_u8.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return {
        "image": np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
        "depth": np.ascontiguousarray(spec.normalize(depth_mm)[:, None]),
    }


def rgbd_input(images_rgb_u8: np.ndarray, depth_mm: np.ndarray, mean, std, spec: DepthSpec) -> np.ndarray:
    """(N,H,W,3) uint8 RGB + (N,H,W) uint16 mm -> (N,4,H,W) float32: normalized RGB, normalized depth —
    the one tensor an RGB-D network takes in training (``rgbd_inputs`` concatenated)."""
    parts = rgbd_inputs(images_rgb_u8, depth_mm, mean, std, spec)
    return np.concatenate([parts["image"], parts["depth"]], axis=1)


# ---------------------------------------------------------------- models that take depth


def depth_spec_of(meta: ModelMeta) -> DepthSpec | None:
    """The DepthSpec an RGB-D model was trained with (its metadata's ``extra["depth"]``); None for RGB."""
    d = meta.extra.get("depth")
    return DepthSpec.from_dict(d) if isinstance(d, dict) else None


def require_depth(meta: ModelMeta, has_depth: bool, hint: str) -> DepthSpec | None:
    """The model's DepthSpec, checked against whether depth is given: an RGB-D model without depth (or
    depth for an RGB model) is a user error naming what to do (``hint``: where depth comes from)."""
    spec = depth_spec_of(meta)
    if spec is not None and not has_depth:
        raise DatasetError(
            f"this is an RGB-D model ({meta.channels} channels: RGB + depth) and no depth was given; {hint}"
        )
    if spec is None and has_depth:
        raise DatasetError(f"depth was given but this model takes RGB only ({meta.channels} channels)")
    return spec


def prepare_rgbd(
    frames_bgr: list[np.ndarray], depths_mm: list[np.ndarray], meta: ModelMeta
) -> dict[str, np.ndarray]:
    """uint8 BGR frames + uint16 mm depth images (any size, paired) -> the inputs an RGB-D model takes at
    ``meta.input_size`` (colour resized linearly, depth nearest): {"image": float32 N x 3 x H x W,
    "depth": float32 N x 1 x H x W}, what every runtime's ``run`` takes (engines.runtime.inputs)."""
    spec = depth_spec_of(meta)
    if spec is None:
        raise DatasetError(f"{meta.arch}: the model has no depth normalization in its metadata (not RGB-D)")
    if len(frames_bgr) != len(depths_mm):
        raise DatasetError(f"{len(frames_bgr)} colour frames but {len(depths_mm)} depth images")
    w, h = meta.input_size
    rgb, dep = [], []
    for i, (f, d) in enumerate(zip(frames_bgr, depths_mm, strict=True)):
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise DatasetError(f"frame {i}: colour must be 8-bit BGR, got {f.dtype} {list(f.shape)}")
        if d.ndim != 2 or d.dtype != np.uint16:
            raise DatasetError(f"frame {i}: depth must be a single-channel 16-bit image in mm, got {d.dtype}")
        if f.shape[:2] != (h, w):
            f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
        if d.shape != (h, w):
            d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
        rgb.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        dep.append(d)
    return rgbd_inputs(np.stack(rgb), np.stack(dep), meta.mean, meta.std, spec)
