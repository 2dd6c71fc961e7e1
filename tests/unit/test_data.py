"""Datasets (real CamVid images), their errors, and on-device batch augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.data import (
    BadLabelIds,
    BatchAugmenter,
    DatasetNotFound,
    MissingLabel,
    Normalizer,
    SegmentationDataset,
    SizeMismatch,
    load_datasets,
    parse_augment,
)

SIZE = (120, 90)


@pytest.fixture(scope="module")
def small(camvid: Path) -> SegmentationDataset:
    return SegmentationDataset.load(camvid / "val", size=SIZE, limit=4)


def _copy_pairs(camvid: Path, dst: Path, n: int = 2) -> list[str]:
    """A tiny dataset folder built from real CamVid files (plus classes.json beside it)."""
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    shutil.copy(camvid / "classes.json", dst / "classes.json")
    stems = sorted(p.stem for p in (camvid / "val" / "images").glob("*.jpg"))[:n]
    for s in stems:
        shutil.copy(camvid / "val" / "images" / f"{s}.jpg", dst / "images")
        shutil.copy(camvid / "val" / "labels" / f"{s}.png", dst / "labels")
    return stems


def test_load_resizes_and_keeps_label_values(camvid: Path, small: SegmentationDataset) -> None:
    assert small.images.shape == (4, 90, 120, 3) and small.images.dtype == np.uint8
    assert small.labels.shape == (4, 90, 120) and small.labels.dtype == np.uint8
    assert small.classes.num_classes == 11 and small.ignore_index == 11
    full = SegmentationDataset.load(camvid / "val", limit=4)
    assert full.size == (240, 180)  # the fixtures' size (tests/fixtures/README.md)
    # nearest-neighbour labels: no value appears that was not in the original label
    for a, b in zip(full.labels, small.labels, strict=True):
        assert set(np.unique(b)) <= set(np.unique(a))


def test_pair_list_order_and_merge(camvid: Path) -> None:
    ds = SegmentationDataset.load(camvid / "train", size=SIZE, limit=3)
    first = [line.split()[0].split("/")[-1] for line in (camvid / "train.txt").read_text().splitlines()[:3]]
    assert ds.names == first
    merged = load_datasets([camvid / "train", camvid / "val"], size=SIZE, limit=3)
    assert len(merged) == 6 and len(merged.roots) == 2
    other = SegmentationDataset.load(camvid / "val", size=(60, 45), limit=2)
    with pytest.raises(SizeMismatch, match="60x45"):
        SegmentationDataset.merge([ds, other])


def test_missing_folder_and_classes(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="not found"):
        SegmentationDataset.load(tmp_path / "nope")
    (tmp_path / "d" / "images").mkdir(parents=True)
    with pytest.raises(DatasetNotFound, match="classes.json"):
        SegmentationDataset.load(tmp_path / "d")


def test_image_without_label_names_the_file(camvid: Path, tmp_path: Path) -> None:
    stems = _copy_pairs(camvid, tmp_path / "ds")
    (tmp_path / "ds" / "labels" / f"{stems[1]}.png").unlink()
    with pytest.raises(MissingLabel, match=stems[1]):
        SegmentationDataset.load(tmp_path / "ds")


def test_size_mismatch_names_both_sizes(camvid: Path, tmp_path: Path) -> None:
    stems = _copy_pairs(camvid, tmp_path / "ds")
    lab_path = tmp_path / "ds" / "labels" / f"{stems[0]}.png"
    lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(lab_path), cv2.resize(lab, (120, 90), interpolation=cv2.INTER_NEAREST))
    with pytest.raises(SizeMismatch, match=r"240x180.*120x90"):
        SegmentationDataset.load(tmp_path / "ds")


def test_label_ids_outside_table_named(camvid: Path, tmp_path: Path) -> None:
    stems = _copy_pairs(camvid, tmp_path / "ds")
    lab_path = tmp_path / "ds" / "labels" / f"{stems[1]}.png"
    lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
    lab[:5, :5] = 42
    lab[-1, -1] = 200
    cv2.imwrite(str(lab_path), lab)
    with pytest.raises(BadLabelIds, match=rf"{stems[1]}\.png.*\[42, 200\]"):
        SegmentationDataset.load(tmp_path / "ds")


def _augmenter(small: SegmentationDataset, enabled, crop=(64, 48)) -> BatchAugmenter:
    norm = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cpu")
    return BatchAugmenter(enabled, crop, small.ignore_index, norm)


def test_augmentation_is_deterministic_and_never_invents_labels(small: SegmentationDataset) -> None:
    aug = _augmenter(small, parse_augment("all"))
    imgs, labs = torch.from_numpy(small.images), torch.from_numpy(small.labels)
    x1, y1 = aug(imgs, labs, torch.Generator().manual_seed(7))
    x2, y2 = aug(imgs, labs, torch.Generator().manual_seed(7))
    x3, _ = aug(imgs, labs, torch.Generator().manual_seed(8))
    assert x1.shape == (4, 3, 48, 64) and y1.shape == (4, 48, 64) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    for i in range(4):
        before = set(np.unique(small.labels[i]).tolist()) | {small.ignore_index}
        assert set(torch.unique(y1[i]).tolist()) <= before


def test_no_augmentation_is_identity_and_flip_mirrors(small: SegmentationDataset) -> None:
    imgs, labs = torch.from_numpy(small.images), torch.from_numpy(small.labels)
    norm = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cpu")
    x, y = _augmenter(small, ())(imgs, labs, torch.Generator().manual_seed(0))
    assert torch.equal(y, labs.long())
    assert torch.allclose(x, norm(imgs), atol=1e-5)
    xf, yf = _augmenter(small, ("flip",))(imgs, labs, torch.Generator().manual_seed(0))
    for i in range(4):
        same, mirrored = torch.equal(yf[i], y[i]), torch.equal(yf[i], y[i].flip(-1))
        assert same or mirrored
        assert torch.allclose(xf[i], x[i] if same else x[i].flip(-1), atol=1e-4)
    assert not torch.equal(yf, y)  # seed 0 mirrors at least one of the four


def test_jitter_changes_pixels_not_labels(small: SegmentationDataset) -> None:
    imgs, labs = torch.from_numpy(small.images), torch.from_numpy(small.labels)
    x, y = _augmenter(small, ("jitter",))(imgs, labs, torch.Generator().manual_seed(3))
    assert torch.equal(y, labs.long())
    norm = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cpu")
    assert (x - norm(imgs)).abs().mean() > 0.01


def test_geometric_augmentation_keeps_image_and_label_aligned(small: SegmentationDataset) -> None:
    """Encode each label as the image's grey level: after scale/crop/flip both must still agree."""
    labs = torch.from_numpy(small.labels)
    imgs = (labs.clamp(max=10) * 20).to(torch.uint8).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    norm = Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "cpu")
    aug = BatchAugmenter(("scale", "crop", "flip"), (64, 48), small.ignore_index, norm)
    x, y = aug(imgs, labs, torch.Generator().manual_seed(5))
    inside = y != small.ignore_index
    decoded = torch.round(x[:, 0] * 255 / 20).long()
    agree = (decoded[inside] == y[inside].clamp(max=10)).float().mean()
    # only class-boundary pixels may differ (bilinear vs nearest); a 3 px shift gives 0.87
    assert agree > 0.93
