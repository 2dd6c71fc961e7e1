"""Frames larger than the model: scaled or tiled inference, and the stitching of tiles.

*scaled*: the whole frame is resized to the model input, inferred, and the class ids resized back (fast;
a pole 20 px wide in a 4K frame is gone before the network sees it). *tiled*: the frame (optionally
resized by ``scale`` first) is cut into overlapping tiles of the model's input size, every tile is
inferred at the model's native scale, and the tiles are blended into one full-resolution mask.

Blending: the model contract (engines.runtime.contract) returns class ids and the top-1 probability,
not logits, so each tile's per-pixel class distribution is taken as p(top) = confidence and the rest
spread evenly over the other classes. Those distributions are averaged with a smooth window that falls
towards each tile's edges (where the network sees least context), so a pixel in an overlap is decided
mostly by the tile that sees it in its middle: no hard seams. Every pixel's class is the argmax of the
blended distribution, its confidence the blended probability of that class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import SegstreamError

if TYPE_CHECKING:
    from engines.runtime.base import Runtime

MODES = ("scaled", "tiled")
DEFAULT_OVERLAP = 0.25  # of the tile size, per axis
WINDOW_FLOOR = 1e-3  # least weight of a pixel in a tile: every pixel of every tile still counts


class TilingError(SegstreamError, ValueError):
    """A tiling parameter or input is out of range; the message names it and its value."""

    def __init__(self, message: str, key: str | None = None, value: object = None, why: str = "") -> None:
        super().__init__(message)
        self.key, self.value, self.why = key, value, why


def _bad(key: str, value: object, why: str) -> TilingError:
    return TilingError(f"{key} {value!r}: {why}", key, value, why)


def check_params(mode: str, scale: float, overlap: float) -> None:
    """Validate the three knobs up front (the run config and the CLIs call this)."""
    if mode not in MODES:
        raise _bad("infer_mode", mode, f"must be one of {', '.join(MODES)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.05 <= float(scale) <= 4.0:
        raise _bad("infer_scale", scale, "must be a number in [0.05, 4]")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) < 0.5:
        raise _bad("tile_overlap", overlap, "must be a fraction in [0, 0.5)")
    if mode == "scaled" and float(scale) != 1.0:
        raise _bad("infer_scale", scale, "applies to infer_mode 'tiled' only")


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: the fewest tiles of ``tile`` pixels that cover ``length`` with at
    least ``overlap`` pixels shared between neighbours, spread evenly (first at 0, last flush with the
    end)."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def axis_window(size: int, before: int, after: int) -> np.ndarray:
    """One tile's 1-D weights: a raised-cosine rise over the ``before`` pixels it shares with the previous
    tile, a mirrored fall over the ``after`` pixels shared with the next, 1 elsewhere. A neighbour's fall
    over the same pixels is exactly 1 - this rise, so the weights of all tiles add up to 1 everywhere (a
    partition of unity: no pixel is weighted differently for lying in an overlap). Never below
    WINDOW_FLOOR."""
    w = np.ones(size, np.float32)

    def rise(n: int) -> np.ndarray:
        x = (np.arange(n, dtype=np.float64) + 0.5) / n
        return 0.5 - 0.5 * np.cos(np.pi * x)

    if before > 0:
        w[:before] = rise(before)
    if after > 0:
        w[size - after :] = np.minimum(w[size - after :], rise(after)[::-1])
    return np.maximum(w, WINDOW_FLOOR)


def _fades(starts: list[int], tile: int) -> list[tuple[int, int]]:
    """(before, after) overlap of each tile with its neighbours along one axis."""
    shared = [starts[i] + tile - starts[i + 1] for i in range(len(starts) - 1)]
    return [(shared[i - 1] if i > 0 else 0, shared[i] if i < len(shared) else 0) for i in range(len(starts))]


@lru_cache(maxsize=64)
def _window(th: int, tw: int, fy: tuple[int, int], fx: tuple[int, int]) -> np.ndarray:
    w = np.outer(axis_window(th, *fy), axis_window(tw, *fx)).astype(np.float32)
    w.flags.writeable = False  # cached: every frame's tiles share it
    return w


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one (h, w) image lie; ``tile`` is (th, tw)."""

    height: int
    width: int
    tile: tuple[int, int]
    ys: tuple[int, ...]  # tile rows' top edges
    xs: tuple[int, ...]  # tile columns' left edges

    @classmethod
    def make(
        cls, hw: tuple[int, int], tile_hw: tuple[int, int], overlap: float = DEFAULT_OVERLAP
    ) -> TileGrid:
        h, w = int(hw[0]), int(hw[1])
        th, tw = int(tile_hw[0]), int(tile_hw[1])
        if h < th or w < tw:
            raise TilingError(f"image {w}x{h} is smaller than a {tw}x{th} tile (resize it up first)")
        ys = axis_starts(h, th, round(th * overlap))
        xs = axis_starts(w, tw, round(tw * overlap))
        return cls(h, w, (th, tw), tuple(ys), tuple(xs))

    @property
    def origins(self) -> list[tuple[int, int]]:
        """(y, x) of each tile's top-left corner, row by row."""
        return [(y, x) for y in self.ys for x in self.xs]

    def window(self, index: int) -> np.ndarray:
        """(th, tw) float32 blending weights of tile ``index`` (read-only, shared)."""
        th, tw = self.tile
        iy, ix = divmod(index, len(self.xs))
        return _window(th, tw, _fades(list(self.ys), th)[iy], _fades(list(self.xs), tw)[ix])

    def cut(self, image: np.ndarray) -> list[np.ndarray]:
        """Views of the tiles (no copies)."""
        th, tw = self.tile
        return [image[y : y + th, x : x + tw] for y, x in self.origins]


class Stitcher:
    """Accumulates per-tile (ids, confidence) into window-weighted class scores for one image."""

    def __init__(self, grid: TileGrid, num_classes: int) -> None:
        self.grid = grid
        self.k = int(num_classes)
        h, w = grid.height, grid.width
        # scores[c]: sum over tiles of window * (p(c) - p(other)) where the tile voted c; the even share
        # of the classes a tile did not vote for is the same for all of them, so it is kept once (rest)
        self.scores = np.zeros((self.k, h, w), np.float32)
        self.weight = np.zeros((h, w), np.float32)
        self.rest = np.zeros((h, w), np.float32)
        self._seen = np.zeros(self.k, bool)  # classes any tile voted for: the only planes to look at
        self.added = 0

    def add(self, index: int, ids: np.ndarray, confidence: np.ndarray | None) -> None:
        import cv2  # lazily: run-config validation imports this module, and needs no OpenCV

        y, x = self.grid.origins[index]
        th, tw = self.grid.tile
        if ids.shape != (th, tw):
            raise TilingError(f"tile {index}: mask {ids.shape[1]}x{ids.shape[0]}, expected {tw}x{th}")
        win = self.grid.window(index)
        # without a confidence output every tile's vote counts fully (p(top) = 1)
        p = np.ones((th, tw), np.float32) if confidence is None else confidence.astype(np.float32) / 255.0
        other = (1.0 - p) / max(self.k - 1, 1)
        vote = win * (p - other)
        region = (slice(y, y + th), slice(x, x + tw))
        # cv2.accumulate adds in place into these views (masked, SIMD): ~3x NumPy's multiply-then-add
        if int(ids.max()) >= self.k:
            raise TilingError(f"tile {index}: class id {int(ids.max())} but the model has {self.k} classes")
        present = np.flatnonzero(np.bincount(ids.ravel(), minlength=self.k))
        self._seen[present] = True
        # one masked add per class present: plain vector operations, no scatter
        for c in present:
            cv2.accumulate(vote, self.scores[c][region], mask=(ids == c).view(np.uint8))
        cv2.accumulate(win, self.weight[region])
        cv2.accumulate(win * other, self.rest[region])
        self.added += 1

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (h, w) uint8, confidence (h, w) uint8) of the blended tiles."""
        if self.added != len(self.grid.origins):
            raise TilingError(f"stitch: {self.added} of {len(self.grid.origins)} tiles added")
        classes = np.flatnonzero(self._seen)
        ids = np.full(self.weight.shape, classes[0], np.uint8)
        top = self.scores[classes[0]].copy()
        for c in classes[1:]:  # running argmax: ties keep the lower class id, like np.argmax
            better = self.scores[c] > top
            ids[better] = c
            np.maximum(top, self.scores[c], out=top)
        prob = (top + self.rest) / self.weight
        conf = np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return ids, conf


def work_image(frame: np.ndarray, tile_hw: tuple[int, int], scale: float) -> np.ndarray:
    """The frame at the scale tiles are cut from: ``scale`` times its size, but never smaller than one
    tile (a frame that small is resized up to cover it: one tile is then plain scaled inference)."""
    import cv2  # lazily: run-config validation imports this module, and needs no OpenCV

    h, w = frame.shape[:2]
    th, tw = tile_hw
    s = max(float(scale), th / h, tw / w)
    size = (max(tw, round(w * s)), max(th, round(h * s)))
    if size == (w, h):
        return frame
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interp)


def to_size(ids: np.ndarray, conf: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Masks back to the frame's size: nearest for class ids (never invent a class), linear for confidence."""
    import cv2  # lazily: run-config validation imports this module, and needs no OpenCV

    if ids.shape[:2] == tuple(hw):
        return ids, conf
    size = (int(hw[1]), int(hw[0]))
    return (
        cv2.resize(ids, size, interpolation=cv2.INTER_NEAREST),
        cv2.resize(conf, size, interpolation=cv2.INTER_LINEAR),
    )


RunTiles = Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray | None]]


def infer_tiled(
    images: Sequence[np.ndarray],
    tile_hw: tuple[int, int],
    num_classes: int,
    run_tiles: RunTiles,
    max_batch: int,
    overlap: float = DEFAULT_OVERLAP,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tile every image (each at least one tile in size), run all their tiles in batches of up to
    ``max_batch`` (tiles of different images share batches), and stitch each image's tiles.

    ``run_tiles(list of tile views) -> (ids (N, th, tw), confidence or None)``. Returns (ids, confidence)
    per image at that image's size.
    """
    grids = [TileGrid.make(img.shape[:2], tile_hw, overlap) for img in images]
    stitchers = [Stitcher(g, num_classes) for g in grids]
    jobs = [(i, t, tile) for i, g in enumerate(grids) for t, tile in enumerate(g.cut(images[i]))]
    step = max(1, int(max_batch))
    for b in range(0, len(jobs), step):
        chunk = jobs[b : b + step]
        ids, conf = run_tiles([tile for _, _, tile in chunk])
        for j, (i, t, _) in enumerate(chunk):
            stitchers[i].add(t, ids[j], None if conf is None else conf[j])
    return [s.result() for s in stitchers]


def predict(
    runtime: Runtime,
    frames: Sequence[np.ndarray],
    mode: str = "scaled",
    scale: float = 1.0,
    overlap: float = DEFAULT_OVERLAP,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(ids, confidence) at each frame's full size with a loaded Runtime, in either mode (for
    `segstream predict` / `eval` and tools; the infer stage does the same from its inputs).
    Confidence is None in scaled mode when the model has no confidence output."""
    check_params(mode, scale, overlap)
    want_conf = bool(getattr(runtime, "has_confidence", True))
    if mode == "scaled":
        out = []
        for f in frames:
            ids, conf = runtime.run(runtime.prepare([f]), confidence=want_conf)
            c = conf[0] if conf is not None else np.full(ids[0].shape, 255, np.uint8)
            m, c = to_size(ids[0], c, f.shape[:2])
            out.append((m, c if conf is not None else None))
        return out
    w, h = runtime.meta.input_size
    work = [work_image(f, (h, w), scale) for f in frames]

    def run_tiles(tiles: list[np.ndarray]):
        return runtime.run(runtime.prepare(tiles), confidence=want_conf)

    res = infer_tiled(work, (h, w), runtime.meta.classes.num_classes, run_tiles, runtime.max_batch, overlap)
    return [to_size(m, c, f.shape[:2]) for (m, c), f in zip(res, frames, strict=True)]
