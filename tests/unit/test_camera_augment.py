"""Augmentations aimed at new drives and cameras (aspect, wb, exposure, blur, noise, jpeg) on real
CamVid fixture frames: each changes what it should, never a label, and the same seed gives the same batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engines.data import (
    AUGMENTATIONS,
    CAMERA_AUGMENTATIONS,
    DEFAULT_AUGMENTATIONS,
    BatchAugmenter,
    DatasetError,
    Normalizer,
    load_datasets,
    parse_augment,
)

UNIT = Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "cpu")  # output stays in [0, 1] pixels


@pytest.fixture(scope="module")
def batch(camvid: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_datasets([camvid / "train", camvid / "val"], size=(120, 90))
    return torch.from_numpy(data.images), torch.from_numpy(data.labels)


def run(enabled, batch, seed: int = 0):
    imgs, labs = batch
    return BatchAugmenter(enabled, None, 11, UNIT)(imgs, labs, torch.Generator().manual_seed(seed))


def plain(batch) -> torch.Tensor:
    return batch[0].permute(0, 3, 1, 2).float() / 255


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute Laplacian (high-frequency energy)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(x.mean(1, keepdim=True), k).abs().mean((1, 2, 3))


def test_parse_augment_names() -> None:
    assert parse_augment(None) == DEFAULT_AUGMENTATIONS == ("scale", "crop", "flip", "jitter")
    assert parse_augment("all") == AUGMENTATIONS == DEFAULT_AUGMENTATIONS + CAMERA_AUGMENTATIONS
    assert parse_augment("wb, jpeg") == ("wb", "jpeg")
    with pytest.raises(DatasetError, match=r"--augment: unknown augmentation \['sepia'\]"):
        parse_augment("wb,sepia")


@pytest.mark.parametrize("name", ["wb", "exposure", "blur", "noise", "jpeg"])
def test_photometric_camera_augmentations_change_pixels_never_labels(name: str, batch) -> None:
    x, y = run((name,), batch)
    assert torch.equal(y, batch[1].long())
    assert x.min() >= 0 and x.max() <= 1
    changed = (x - plain(batch)).abs().flatten(1).amax(1) > 2 / 255
    assert changed.any(), f"{name} changed no image"
    x2, _ = run((name,), batch)
    assert torch.equal(x, x2)  # same seed, same batch
    if name in ("blur", "jpeg"):  # applied to part of the batch only
        assert not changed.all()
    ref = plain(batch)
    if name == "blur":
        assert (sharpness(x)[changed] < 0.9 * sharpness(ref)[changed]).all()
    if name == "noise":
        assert (sharpness(x)[changed] > sharpness(ref)[changed]).all()
    if name == "wb":
        # channel gains differ: red/blue balance moves, not just brightness
        ratio = (x.mean((2, 3)) + 1e-3) / (ref.mean((2, 3)) + 1e-3)
        assert (ratio[:, 0] - ratio[:, 2]).abs().max() > 0.05
    if name == "exposure":
        assert (x.mean((1, 2, 3)) - ref.mean((1, 2, 3))).abs().max() > 0.03


def test_enabling_one_camera_augmentation_leaves_the_others_draws_alone(batch) -> None:
    # every camera draw comes from one fixed block, so adding 'noise' does not change what 'wb' does
    xw, _ = run(("wb",), batch, seed=3)
    xwn, _ = run(("wb", "noise"), batch, seed=3)
    xn, _ = run(("noise",), batch, seed=3)
    assert torch.allclose((xwn - xw).abs().mean(), (xn - plain(batch)).abs().mean(), rtol=0.3)


def test_aspect_keeps_image_and_label_aligned(batch) -> None:
    """Labels drawn into the image as grey levels must survive a random-aspect zoom together."""
    labs = batch[1]
    imgs = (labs.clamp(max=10) * 20).to(torch.uint8).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    aug = BatchAugmenter(("scale", "crop", "aspect"), (64, 48), 11, UNIT)
    x, y = aug(imgs, labs, torch.Generator().manual_seed(5))
    x0, _ = BatchAugmenter(("scale", "crop"), (64, 48), 11, UNIT)(
        imgs, labs, torch.Generator().manual_seed(5)
    )
    assert not torch.equal(x, x0)  # the aspect draw did something
    inside = y != 11
    agree = (torch.round(x[:, 0] * 255 / 20).long()[inside] == y[inside].clamp(max=10)).float().mean()
    assert agree > 0.93
