"""engines.tiling: tile grid, blending window, stitching; scaled vs tiled on real CamVid frames."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines import tiling
from engines.runtime import load
from engines.runtime.preprocess import prepare_batch
from tests.unit import tiling_models as tm

BUNDLED = Path(__file__).resolve().parents[2] / "stream" / "assets" / "default.onnx"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiling_models")
    return {"color": tm.color_model(root), "box": tm.box_model(root)}


@pytest.mark.parametrize(
    "length,tile,overlap", [(100, 100, 25), (101, 100, 25), (517, 64, 16), (1920, 480, 120)]
)
def test_axis_starts_cover_the_axis_with_the_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tiling.axis_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (tile - gaps >= overlap).all()
    # the fewest tiles: one fewer would leave less than the overlap somewhere
    if len(starts) > 1:
        assert (length - tile) / (len(starts) - 2 or 1) > tile - overlap or len(starts) == 2


def test_window_weights_sum_to_one_everywhere() -> None:
    """Raised-cosine fades over the overlap add up to a flat 1: a partition of unity, so no pixel in an
    overlap is weighted differently from one in a tile's middle (no seams in the blend)."""
    grid = tiling.TileGrid.make((300, 517), (48, 64), 0.25)
    assert len(set(np.diff(grid.xs))) > 1  # uneven spread: overlaps of different widths
    total = np.zeros((300, 517), np.float32)
    for i, (y, x) in enumerate(grid.origins):
        win = grid.window(i)
        assert win.min() > 0 and win.max() == 1.0
        total[y : y + 48, x : x + 64] += win
    assert np.allclose(total, 1.0, atol=2e-3), (total.min(), total.max())


def test_tiled_mask_is_the_exact_full_resolution_mask(models) -> None:
    """A per-pixel colour classifier on a mosaic of 5-40 px blocks, 517x301 (not a multiple of the
    tile): tiled inference must give the exact colour mask at every pixel. A tile cut or stitched one
    pixel off moves every block edge it crosses; scaled inference (resize, infer, resize back) blurs
    them, which shows the mosaic is sensitive to that."""
    rt = load(models["color"], device="cpu", threads=1)
    img, truth = tm.block_mosaic(301, 517, seed=0, palette=tm.COLORS_BGR)
    (ids, conf), (sids, _) = tiling.predict(rt, [img], "tiled")[0], tiling.predict(rt, [img], "scaled")[0]
    assert ids.shape == truth.shape and conf.shape == truth.shape
    assert np.array_equal(ids, truth), f"{int((ids != truth).sum())} pixels differ"
    assert conf.min() > 200  # blended confidence of a confident model stays high everywhere
    assert (sids == truth).mean() < 0.95


def test_blend_removes_tile_edge_artifacts(models) -> None:
    """A fully convolutional box filter: within 2 px of a tile's edge its zero padding flips a white area
    to the other class. Blended tiles must equal whole-image inference away from the image border;
    the same tiles with hard seams (no overlap) keep the artifact along every inner tile edge."""
    rt = load(models["box"], device="cpu", threads=1)
    bw = np.array([[255, 255, 255], [0, 0, 0]], np.uint8)
    img, _ = tm.block_mosaic(48 * 5, 64 * 6, seed=1, palette=bw, lo=20, hi=60)
    import torch

    meta = replace(rt.meta, input_size=(img.shape[1], img.shape[0]))
    whole = tm.BoxNet().eval()(torch.from_numpy(prepare_batch([img], meta))).argmax(1)[0].numpy()
    inner = (slice(8, -8), slice(8, -8))
    blended, _ = tiling.predict(rt, [img], "tiled", overlap=0.25)[0]
    seams, _ = tiling.predict(rt, [img], "tiled", overlap=0.0)[0]
    assert int((blended[inner] != whole[inner]).sum()) == 0
    assert (seams[inner] != whole[inner]).mean() > 0.02


def test_tiles_of_several_frames_share_batches() -> None:
    """Tiles of different frames go through the runtime together, up to max_batch per call."""
    calls: list[int] = []

    def run_tiles(tiles):
        calls.append(len(tiles))
        n = len(tiles)
        return np.zeros((n, 48, 64), np.uint8), np.full((n, 48, 64), 255, np.uint8)

    frames = [np.zeros((100, 130, 3), np.uint8), np.zeros((48, 64, 3), np.uint8)]
    res = tiling.infer_tiled(frames, (48, 64), 3, run_tiles, max_batch=4)
    per_frame = [len(tiling.TileGrid.make(f.shape[:2], (48, 64)).origins) for f in frames]
    assert calls == [4] * (sum(per_frame) // 4) + ([sum(per_frame) % 4] if sum(per_frame) % 4 else [])
    assert [r[0].shape for r in res] == [(100, 130), (48, 64)]


def test_work_image_scales_but_never_below_one_tile() -> None:
    f = np.zeros((1440, 1920, 3), np.uint8)
    assert tiling.work_image(f, (360, 480), 0.5).shape == (720, 960, 3)
    assert tiling.work_image(f, (360, 480), 1.0) is f
    small = np.zeros((180, 240, 3), np.uint8)
    assert tiling.work_image(small, (360, 480), 1.0).shape == (360, 480, 3)  # one tile: plain scaled


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"infer_mode": "mosaic"}, "infer_mode"),
        ({"infer_mode": "tiled", "infer_scale": 0}, "infer_scale"),
        ({"infer_mode": "tiled", "tile_overlap": 0.5}, "tile_overlap"),
        ({"infer_scale": 0.5}, "infer_scale"),  # a scale means nothing to scaled mode
    ],
)
def test_run_config_names_the_bad_key_and_value(kw: dict, key: str) -> None:
    from stream.config import ConfigError, PipelineConfig

    with pytest.raises(ConfigError) as e:
        PipelineConfig(**kw)
    assert f"'{key}' = {kw[key]!r}" in str(e.value)


def _mosaics(split: Path):
    """2x2 mosaics of fixture frames, each frame first brought to the 480x360 scale the bundled model
    was trained at: a 960x720 frame whose objects are at the model's native scale, like a camera with
    more pixels and a wider view. Labels nearest."""
    imgs = sorted((split / "images").glob("*.jpg"))
    pairs = []
    for p in imgs:
        img = cv2.resize(cv2.imread(str(p)), (480, 360), interpolation=cv2.INTER_LINEAR)
        lab = cv2.imread(str(split / "labels" / f"{p.stem}.png"), cv2.IMREAD_GRAYSCALE)
        pairs.append((img, cv2.resize(lab, (480, 360), interpolation=cv2.INTER_NEAREST)))
    for i in range(0, len(pairs) - 3, 4):
        q = pairs[i : i + 4]
        yield tuple(np.vstack([np.hstack([q[0][k], q[1][k]]), np.hstack([q[2][k], q[3][k]])]) for k in (0, 1))


def test_tiled_beats_scaled_on_thin_classes_of_real_frames(camvid: Path) -> None:
    """The bundled model on real CamVid frames in 960x720 mosaics: scaled inference halves every pole
    and sign before the network sees it; tiles at the model's native scale keep them. Pole and
    SignSymbol IoU must rise by a clear margin (measured: Pole 0.09 -> 0.21, SignSymbol 0.31 -> 0.43)."""
    from engines.metrics import ConfusionMatrix

    rt = load(BUNDLED, device="cpu", threads=1)
    names = list(rt.meta.classes.names)
    cms = {m: ConfusionMatrix(11, rt.meta.classes.ignore_index) for m in tiling.MODES}
    count = 0
    for img, lab in _mosaics(camvid / "train"):
        assert img.shape == (720, 960, 3)
        count += 1
        for mode in tiling.MODES:
            ids, _ = tiling.predict(rt, [img], mode)[0]
            assert ids.shape == lab.shape
            cms[mode].update(lab, ids)
    assert count == 3
    iou = {m: cms[m].summary(names)["iou"] for m in tiling.MODES}
    pole, sign = names.index("Pole"), names.index("SignSymbol")
    assert iou["tiled"][pole] > iou["scaled"][pole] + 0.05, iou
    assert iou["tiled"][sign] > iou["scaled"][sign] + 0.05, iou
