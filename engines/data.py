"""Segmentation datasets (CamVid layout) held in memory as uint8 arrays, and batch augmentation in torch.

A dataset folder holds ``images/*.jpg|png`` and ``labels/*.png`` (class ids, same stem), optionally a
``<split>.txt`` list of "image label" pairs (in the folder or beside it), and a ``classes.json`` in the
folder or its parent. CamVid is small (~40 MB of uint8 at 480x360), so everything is decoded once and the
training loop indexes one tensor on the training device: no DataLoader workers, no per-step host work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.errors import SegstreamError
from engines.meta import ClassTable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: label value used for padding/out-of-image pixels when the class table has no ignore id
FALLBACK_IGNORE = 255


class DatasetError(SegstreamError):
    """A dataset folder is missing or malformed."""


class DatasetNotFound(DatasetError):
    pass


class MissingLabel(DatasetError):
    pass


class SizeMismatch(DatasetError):
    pass


class BadLabelIds(DatasetError):
    pass


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'480x360' -> (480, 360); None/'' -> None."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DatasetError(f"size '{text}' is not WIDTHxHEIGHT (e.g. 480x360)") from None
    if w <= 0 or h <= 0:
        raise DatasetError(f"size '{text}' must be positive")
    return w, h


def ignore_value(classes: ClassTable) -> int:
    return FALLBACK_IGNORE if classes.ignore_index is None else int(classes.ignore_index)


def find_class_table(root: Path) -> ClassTable:
    if not Path(root).is_dir():
        raise DatasetNotFound(f"dataset folder not found: {root}")
    for cand in (root / "classes.json", root.parent / "classes.json"):
        if cand.is_file():
            return ClassTable.from_json_file(cand)
    raise DatasetNotFound(f"{root}: no classes.json in the folder or its parent")


def list_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, label) paths: from <split>.txt when present, else every image with its same-stem label."""
    for lst in (root / f"{root.name}.txt", root.parent / f"{root.name}.txt"):
        if lst.is_file():
            pairs = []
            for n, line in enumerate(lst.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise DatasetError(f"{lst}:{n}: expected 'image label', got '{line.strip()}'")
                img, lab = (root / p for p in parts)
                if not img.is_file():
                    raise DatasetError(f"{lst}:{n}: image not found: {img}")
                if not lab.is_file():
                    raise MissingLabel(f"{img}: label file not found: {lab}")
                pairs.append((img, lab))
            return pairs
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DatasetNotFound(f"{root}: no images/ folder (expected images/*.jpg and labels/*.png)")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = []
    for img in images:
        lab = lab_dir / f"{img.stem}.png"
        if not lab.is_file():
            raise MissingLabel(f"{img}: no label {lab}")
        pairs.append((img, lab))
    return pairs


@dataclass
class SegmentationDataset:
    """Images (N,H,W,3 uint8 RGB) and labels (N,H,W uint8 class ids) of one or more folders; RGB-D
    folders (engines.depth) add ``depth`` (N,H,W uint16 millimetres, 0 = no measurement)."""

    images: np.ndarray
    labels: np.ndarray
    classes: ClassTable
    names: list[str]
    roots: list[str]
    depth: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    @property
    def ignore_index(self) -> int:
        return ignore_value(self.classes)

    @classmethod
    def load(
        cls,
        root: str | Path,
        size: tuple[int, int] | None = None,
        classes: ClassTable | None = None,
        limit: int | None = None,
    ) -> SegmentationDataset:
        """Decode a folder; ``size`` (w, h) resizes images (area/linear) and labels (nearest only)."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetNotFound(f"dataset folder not found: {root}")
        classes = classes or find_class_table(root)
        pairs = list_pairs(root)
        if limit:
            pairs = pairs[:limit]
        if not pairs:
            raise DatasetNotFound(f"{root}: no images found")
        allowed = np.zeros(256, bool)
        allowed[: classes.num_classes] = True
        if classes.ignore_index is not None and 0 <= classes.ignore_index < 256:
            allowed[classes.ignore_index] = True
        images, labels = [], []
        for img_path, lab_path in pairs:
            img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError(f"{img_path}: cannot decode image")
            lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
            if lab is None:
                raise DatasetError(f"{lab_path}: cannot decode label")
            if lab.ndim != 2 or lab.dtype != np.uint8:
                raise DatasetError(f"{lab_path}: label must be a single-channel 8-bit PNG of class ids")
            if img.shape[:2] != lab.shape:
                raise SizeMismatch(
                    f"{img_path} is {img.shape[1]}x{img.shape[0]} but {lab_path} is "
                    f"{lab.shape[1]}x{lab.shape[0]}"
                )
            bad = np.unique(lab[~allowed[lab]])
            if bad.size:
                raise BadLabelIds(
                    f"{lab_path}: label ids {bad.tolist()[:10]} outside the class table "
                    f"(0-{classes.num_classes - 1}, ignore {classes.ignore_index})"
                )
            if size is not None and (img.shape[1], img.shape[0]) != size:
                shrink = size[0] < img.shape[1]
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
            images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            labels.append(lab)
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise SizeMismatch(
                f"{root}: images have different sizes {sorted(s[1::-1] for s in shapes)[:4]}; "
                "give a common size (--data-size WxH)"
            )
        return cls(
            images=np.stack(images),
            labels=np.stack(labels),
            classes=classes,
            names=[p[0].name for p in pairs],
            roots=[str(root)],
        )

    @classmethod
    def merge(cls, parts: Sequence[SegmentationDataset]) -> SegmentationDataset:
        """Concatenate datasets ("more data"): same class table and same image size required."""
        first = parts[0]
        for p in parts[1:]:
            if p.classes != first.classes:
                raise DatasetError(f"{p.roots[0]}: class table differs from {first.roots[0]}")
            if p.size != first.size:
                raise SizeMismatch(
                    f"{p.roots[0]} is {p.size[0]}x{p.size[1]} but {first.roots[0]} is "
                    f"{first.size[0]}x{first.size[1]}; give a common --data-size"
                )
        if len({p.depth is None for p in parts}) > 1:
            raise DatasetError(f"{first.roots[0]} and the other folders: some have depth/, some do not")
        if len(parts) == 1:
            return first
        return cls(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            classes=first.classes,
            names=[n for p in parts for n in p.names],
            roots=[r for p in parts for r in p.roots],
            depth=None if first.depth is None else np.concatenate([p.depth for p in parts]),
        )

    def subset(self, keep: Sequence[int] | np.ndarray) -> SegmentationDataset:
        """The images at indices ``keep`` (in that order), as a new dataset."""
        idx = np.asarray(keep, dtype=np.int64)
        return SegmentationDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=self.classes,
            names=[self.names[i] for i in idx],
            roots=list(self.roots),
            depth=None if self.depth is None else self.depth[idx],
        )

    def drives(self, regex: str | None = None) -> list[str]:
        """The drive (group) of every image, from its file name (see ``drive_of``)."""
        pattern = compile_group_regex(regex)
        return [drive_of(n, pattern) for n in self.names]


def load_datasets(
    roots: Sequence[str | Path], size: tuple[int, int] | None = None, limit: int | None = None
) -> SegmentationDataset:
    parts = [SegmentationDataset.load(r, size=size, limit=limit) for r in roots]
    return SegmentationDataset.merge(parts)


# --------------------------------------------------------------------------------------------------
# Drives: groups of images filmed in one session, for leave-one-drive-out validation

#: CamVid names start with the drive: 0001TP_006690.jpg, 0006R0_f02430.jpg, Seq05VD_f00000.jpg
DEFAULT_GROUP_REGEX = r"^([^_]+)_"


def compile_group_regex(regex: str | None) -> re.Pattern[str]:
    """--group-regex: the drive is the named group 'drive', else group 1, else the whole match."""
    text = regex or DEFAULT_GROUP_REGEX
    try:
        return re.compile(text)
    except re.error as e:
        raise DatasetError(f"--group-regex '{text}' is not a valid regular expression: {e}") from None


def drive_of(name: str, pattern: re.Pattern[str], unmatched: str | None = None) -> str:
    """The drive of one file name (searched, so the regex need not match from the start).

    A name the regex misses is an error, or ``unmatched`` when one is given."""
    m = pattern.search(name)
    if m is None and unmatched is not None:
        return unmatched
    if m is None:
        raise DatasetError(
            f"--group-regex '{pattern.pattern}' does not match the file name '{name}', so its drive is "
            "unknown (give a regex that matches every image name)"
        )
    if "drive" in pattern.groupindex:
        value = m.group("drive")
    elif pattern.groups >= 1:
        value = m.group(1)
    else:
        value = m.group(0)
    if not value:
        raise DatasetError(f"--group-regex '{pattern.pattern}' gives an empty drive for '{name}'")
    return value


def drive_counts(drives: Sequence[str]) -> dict[str, int]:
    """{drive: images}, in sorted drive order (what config.json and error messages show)."""
    counts: dict[str, int] = {}
    for d in sorted(drives):
        counts[d] = counts.get(d, 0) + 1
    return counts


def check_drives(requested: Sequence[str], found: Sequence[str] | dict[str, int], option: str) -> None:
    """DatasetError naming ``option`` when a requested drive has no image; lists the drives found
    (``found``: the drive of every image, or {drive: images})."""
    have = dict(found) if isinstance(found, dict) else drive_counts(found)
    missing = [d for d in requested if d not in have]
    if missing:
        listing = ", ".join(f"{d} ({n})" for d, n in have.items())
        raise DatasetError(
            f"{option} {', '.join(missing)}: no image of that drive; drives found: {listing or 'none'}"
        )


def split_by_drive(
    data: SegmentationDataset, holdout: Sequence[str], regex: str | None = None
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(images of every other drive, images of the ``holdout`` drives): leave-drives-out validation."""
    drives = data.drives(regex)
    check_drives(holdout, drives, "--holdout-drive")
    held = set(holdout)
    train_idx = [i for i, d in enumerate(drives) if d not in held]
    val_idx = [i for i, d in enumerate(drives) if d in held]
    if not train_idx:
        raise DatasetError(
            f"--holdout-drive {', '.join(holdout)} leaves no training image "
            f"(drives found: {', '.join(drive_counts(drives))})"
        )
    return data.subset(train_idx), data.subset(val_idx)


def class_pixel_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels.ravel(), minlength=256)
    return counts[:num_classes].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Augmentation on the training device (torch)

#: what 'default' (and no --augment) means: the recipe the bundled model was trained with
DEFAULT_AUGMENTATIONS = ("scale", "crop", "flip", "jitter")
#: aimed at new drives and cameras: aspect = random aspect ratio of the zoom (random resized crop),
#: wb = white balance (per-channel gains), exposure = gamma, blur = Gaussian blur, noise = sensor
#: noise, jpeg = JPEG re-encoding artefacts
CAMERA_AUGMENTATIONS = ("aspect", "wb", "exposure", "blur", "noise", "jpeg")
AUGMENTATIONS = DEFAULT_AUGMENTATIONS + CAMERA_AUGMENTATIONS


def parse_augment(text: str | None) -> tuple[str, ...]:
    """'scale,crop,flip,jitter' | 'default' | 'camera' (default + camera ones) | 'all' | 'none' -> names."""
    key = "default" if text is None else text.strip().lower()
    if key == "default":
        return DEFAULT_AUGMENTATIONS
    if key in ("all", "camera"):
        return AUGMENTATIONS
    if key in ("none", ""):
        return ()
    names = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise DatasetError(
            f"--augment: unknown augmentation {bad} (choose from {','.join(AUGMENTATIONS)}, "
            "default, all, none)"
        )
    return names


class Normalizer:
    """uint8 NHWC RGB on any device -> float32 NCHW (x/255 - mean) / std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device) -> None:
        import torch

        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images_u8):
        x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
        return self.normalize_unit(x)

    def normalize_unit(self, x):
        return (x - self.mean) / self.std


class BatchAugmenter:
    """Joint image/label augmentation of whole batches with one affine ``grid_sample``.

    Per sample: scale s in ``scale_range`` (zoom), a random crop of ``crop_size`` (w, h) of the scaled
    image (padding with the ignore id where the crop leaves the image), horizontal flip; then photometric
    jitter (brightness, contrast, saturation, hue) on the crop. Images are sampled bilinearly, labels with
    mode='nearest' so label values are never interpolated. Random draws come from ``generator`` (CPU) so
    the same seed gives the same batches on CPU and CUDA.
    """

    def __init__(
        self,
        enabled: Sequence[str],
        crop_size: tuple[int, int] | None,
        ignore_index: int,
        normalizer: Normalizer,
        scale_range: tuple[float, float] = (0.5, 2.0),
        jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.05),
    ) -> None:
        self.enabled = set(enabled)
        self.crop_size = crop_size
        self.ignore_index = ignore_index
        self.normalizer = normalizer
        self.scale_range = scale_range
        self.jitter = jitter

    def __call__(self, images_u8, labels_u8, generator, depth=None, depth_fill: float = 0.0):
        """images (N,H,W,3) uint8, labels (N,H,W) uint8 on the device -> (float NCHW normalized, long NHW).

        ``depth`` (N,H,W) float, already normalized (engines.depth.DepthSpec), becomes a 4th channel: it
        follows the image through the geometric augmentations (same warp, nearest sampling so sensor
        holes and depth edges are never blended, padding with ``depth_fill``) and none of the photometric
        ones. It draws no random numbers, so the colour channels get the same batches as without it."""
        import torch
        import torch.nn.functional as F

        n, h, w = labels_u8.shape
        dev = images_u8.device
        geometric = {"scale", "crop", "flip"} & self.enabled
        x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
        y = labels_u8.long()
        if geometric:
            cw, ch = self.crop_size if ("crop" in self.enabled and self.crop_size) else (w, h)
            r = torch.rand(n, 4, generator=generator)
            if "scale" in self.enabled:
                lo, hi = float(np.log(self.scale_range[0])), float(np.log(self.scale_range[1]))
                s = torch.exp(lo + (hi - lo) * r[:, 0])
            else:
                s = torch.ones(n)
            sx, sy = s, s
            if "aspect" in self.enabled:
                # aspect ratio in [3/4, 4/3] at the same area: another camera's lens/sensor shape
                a = torch.exp((torch.rand(n, generator=generator) * 2 - 1) * float(np.log(4 / 3)))
                sx, sy = s * a.sqrt(), s / a.sqrt()
            # crop window (in scaled-image pixels) at a random offset; negative room means padding
            room_x, room_y = sx * w - cw, sy * h - ch
            ox, oy = r[:, 1] * room_x, r[:, 2] * room_y
            if "crop" not in self.enabled:  # centre the zoom
                ox, oy = room_x / 2, room_y / 2
            flip = torch.ones(n)  # +1 keep, -1 mirror
            if "flip" in self.enabled:
                flip = torch.where(r[:, 3] < 0.5, -flip, flip)
            # output normalized coord -> input normalized coord (align_corners=False)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0] = flip * cw / (sx * w)
            theta[:, 0, 2] = (cw + 2 * ox) / (sx * w) - 1
            theta[:, 1, 1] = ch / (sy * h)
            theta[:, 1, 2] = (ch + 2 * oy) / (sy * h) - 1
            theta = theta.to(dev, non_blocking=True)
            grid = F.affine_grid(theta, [n, 3, ch, cw], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            # shift labels by one so 0 marks "outside the image" after zero padding
            yl = (y + 1).float().unsqueeze(1)
            yl = F.grid_sample(yl, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            yl = yl.squeeze(1).round_().long()
            y = torch.where(yl == 0, torch.full_like(yl, self.ignore_index), yl - 1)
            if depth is not None:  # zero padding of (d - fill) pads the depth with ``fill``
                d = (depth.float() - depth_fill).unsqueeze(1)
                depth = F.grid_sample(d, grid, mode="nearest", padding_mode="zeros", align_corners=False)
                depth = depth.squeeze(1) + depth_fill
        if "jitter" in self.enabled:
            x = self._jitter(x, generator)
        if self.enabled & set(CAMERA_AUGMENTATIONS):
            x = self._camera(x, generator)
        x = self.normalizer.normalize_unit(x)
        if depth is not None:
            x = torch.cat([x, depth.float().unsqueeze(1)], dim=1)
        return x, y

    def _camera(self, x, generator):
        """White balance, exposure, blur, noise and JPEG artefacts, each on a random part of the batch.

        All random numbers are drawn on the CPU from ``generator`` whatever is enabled, so enabling one
        of these never changes the draws of another.
        """
        import torch

        n = x.shape[0]
        dev = x.device
        r = torch.rand(n, 12, generator=generator)
        if "wb" in self.enabled:
            # colour temperature (red against blue) plus a small tint on every channel: gains in ~[0.8, 1.25]
            temp = (r[:, 0] * 2 - 1) * 0.15
            tint = (r[:, 1:4] * 2 - 1) * 0.05
            gains = torch.exp(torch.stack([temp, torch.zeros(n), -temp], 1) + tint)
            x = (x * gains.view(n, 3, 1, 1).to(dev, non_blocking=True)).clamp_(0, 1)
        if "exposure" in self.enabled:
            gamma = torch.exp((r[:, 4] * 2 - 1) * 0.4)  # 0.67-1.49: under- and over-exposed cameras
            x = x.clamp(min=1e-6).pow(gamma.view(n, 1, 1, 1).to(dev, non_blocking=True))
        if "blur" in self.enabled:
            x = self._blur(x, r[:, 5], r[:, 6])
        if "noise" in self.enabled:
            sigma = torch.where(r[:, 7] < 0.5, r[:, 8] * 0.04, torch.zeros(n))
            g = torch.Generator().manual_seed(int(r[0, 9] * 2**31))
            noise = torch.randn(x.shape, generator=g).to(dev, non_blocking=True)
            x = (x + noise * sigma.view(n, 1, 1, 1).to(dev, non_blocking=True)).clamp_(0, 1)
        if "jpeg" in self.enabled:
            x = self._jpeg(x, r[:, 10], r[:, 11])
        return x

    @staticmethod
    def _blur(x, pick, amount):
        """Gaussian blur (sigma 0.4-1.6 px) on ~30% of the batch: defocus, motion, soft lenses."""
        import torch
        import torch.nn.functional as F

        n, c = x.shape[:2]
        sigma = 0.4 + amount * 1.2
        on = pick < 0.3
        if not bool(on.any()):
            return x
        k = torch.arange(7, dtype=torch.float32) - 3
        kern = torch.exp(-(k.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kern = kern / kern.sum(1, keepdim=True)
        ident = torch.zeros(7)
        ident[3] = 1
        kern = torch.where(on.view(-1, 1), kern, ident.view(1, -1))  # n x 7; identity where off
        kern = kern.repeat_interleave(c, 0).to(x.device, non_blocking=True)  # n*c x 7
        y = x.reshape(1, n * c, *x.shape[2:])
        y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), kern.view(n * c, 1, 1, 7), groups=n * c)
        y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), kern.view(n * c, 1, 7, 1), groups=n * c)
        return y.view_as(x).clamp_(0, 1)  # float rounding of the kernel sum may step past 1

    @staticmethod
    def _jpeg(x, pick, quality):
        """JPEG re-encoding at quality 15-75 on ~30% of the batch (block and ringing artefacts).

        OpenCV on the host: one round trip per batch, cheap next to a training step."""
        import cv2
        import torch

        on = (pick < 0.3).tolist()
        if not any(on):
            return x
        q = (15 + quality * 60).round().int().tolist()
        out = x.clone()
        for i in [i for i, v in enumerate(on) if v]:
            img = (x[i].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
            ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q[i]])
            if ok:
                dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
                out[i] = torch.from_numpy(dec).to(x.device).permute(2, 0, 1).float() / 255.0
        return out

    def _jitter(self, x, generator):
        import torch

        n = x.shape[0]
        b, c, s, hue = self.jitter
        # all factors are drawn and combined on the CPU, then sent once (no device->host syncs)
        r = torch.rand(n, 4, generator=generator) * 2 - 1
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        f = torch.stack([1 + b * r[:, 0], 1 + c * r[:, 1], 1 + s * r[:, 2]], 1).to(
            x.device, non_blocking=True
        )
        x = x * f[:, 0].view(n, 1, 1, 1)
        gray = (x * gray_w).sum(1, keepdim=True)
        mean = gray.mean((2, 3), keepdim=True)
        x = (x - mean) * f[:, 1].view(n, 1, 1, 1) + mean
        gray = (x * gray_w).sum(1, keepdim=True)
        x = (x - gray) * f[:, 2].view(n, 1, 1, 1) + gray
        if hue > 0:
            # hue shift = rotation of the chroma plane in YIQ space
            ang = r[:, 3] * hue * 2 * np.pi
            to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
            rot = torch.zeros(n, 3, 3)
            rot[:, 0, 0] = 1
            rot[:, 1, 1] = rot[:, 2, 2] = torch.cos(ang)
            rot[:, 1, 2] = -torch.sin(ang)
            rot[:, 2, 1] = torch.sin(ang)
            m = torch.linalg.inv(to_yiq).unsqueeze(0) @ rot @ to_yiq.unsqueeze(0)
            x = torch.einsum("nij,njhw->nihw", m.to(x.device, non_blocking=True), x)
        return x.clamp_(0, 1)
