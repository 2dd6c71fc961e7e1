"""Tiny real ONNX models for the tiling tests (their correct full-resolution mask is known) and the
adaptive-size tests.

- ``color_model``: a 1x1 convolution that labels each pixel by its brightest RGB channel (pure red,
  green, blue -> classes 0, 1, 2). Position-independent, so tiled inference must reproduce the exact
  per-pixel colour mask: a tile placed or stitched one pixel off shows at every block edge.
- ``box_model``: a 9x9 box filter with zero padding over the red channel, thresholded, with large
  logits. Fully convolutional: away from a tile's edges it computes exactly what the whole image would;
  within 2 px of a tile's edge the padding darkens a white area into the other class, an artifact
  that hard seams keep and a proper blend removes.

Both are exported with `engines.export.export_onnx`, like any segstream model (metadata, ids, confidence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.meta import ClassTable, ModelMeta

COLORS_BGR = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 0]], np.uint8)  # class 0 red, 1 green, 2 blue
TILE = (64, 48)  # (w, h) model input of both models
BOX_THRESHOLD = 1.6  # normalized red 2.25 (white) x 7/9 coverage clears it; x 6/9 (1 px from an edge) not


def _meta(names: list[str], palette: list[list[int]], arch: str) -> ModelMeta:
    return ModelMeta(
        arch=arch, classes=ClassTable(names=names, palette=palette), input_size=TILE, max_batch=4
    )


class ColorNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1) * 4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BoxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 9, padding=4)
        with torch.no_grad():
            w = torch.zeros(2, 3, 9, 9)
            w[0, 0] = 100.0 / 81  # class 0 "bright": 100 x (box(red) - threshold)
            w[1, 0] = -100.0 / 81
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.tensor([-100.0 * BOX_THRESHOLD, 100.0 * BOX_THRESHOLD]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def export(net: nn.Module, meta: ModelMeta, path: Path) -> Path:
    from engines.export import export_onnx

    if not path.is_file():
        export_onnx(net.eval(), meta, path, simplify=False)
    return path


def color_model(root: Path) -> Path:
    meta = _meta(["red", "green", "blue"], [[255, 0, 0], [0, 255, 0], [0, 0, 255]], "colornet")
    return export(ColorNet(), meta, root / "colornet.onnx")


def box_model(root: Path) -> Path:
    meta = _meta(["bright", "dim"], [[255, 255, 255], [0, 0, 0]], "boxnet")
    return export(BoxNet(), meta, root / "boxnet.onnx")


def block_mosaic(h: int, w: int, seed: int, palette: np.ndarray, lo: int = 5, hi: int = 40):
    """An image of random axis-aligned blocks of palette colours and its class mask (the block ids)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((h, w), np.uint8)
    y = 0
    while y < h:
        bh = int(rng.integers(lo, hi))
        x = 0
        while x < w:
            bw = int(rng.integers(lo, hi))
            ids[y : y + bh, x : x + bw] = rng.integers(0, len(palette))
            x += bw
        y += bh
    return palette[ids], ids


class HeavyNet(nn.Module):
    """Eight 3x3 convolutions at full resolution: its cost grows with the input's pixels (about 7x from
    480x360 to 176x136), for the adaptive-size tests."""

    def __init__(self, layers: int = 8, width: int = 24) -> None:
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(layers - 1):
            body += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*body, nn.Conv2d(width, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def heavy_model(root: Path) -> Path:
    """HeavyNet at a native 480x360, exported with dynamic H/W (any input size runs)."""
    torch.manual_seed(0)
    meta = ModelMeta(
        arch="heavynet",
        classes=ClassTable(names=["a", "b"], palette=[[0, 0, 0], [255, 255, 255]]),
        input_size=(480, 360),
        max_batch=1,
    )
    return export(HeavyNet(), meta, root / "heavynet.onnx")
