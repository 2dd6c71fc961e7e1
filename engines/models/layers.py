"""Building blocks shared by the networks: conv+BN(+ReLU), depthwise-separable conv, pooling, resizing.

Everything here exports to ONNX with dynamic batch, height and width (no adaptive pooling to fixed
output sizes: the TorchScript-based exporter bakes such sizes in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """Conv2d (no bias: BN follows) + BatchNorm, optionally followed by ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        pad = dilation * (k - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DSConv(nn.Sequential):
    """Depthwise-separable conv: depthwise 3x3 (+BN+ReLU) then pointwise 1x1 (+BN+ReLU)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(ConvBN(cin, cin, 3, stride, groups=cin), ConvBN(cin, cout, 1))


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (traced, so the ONNX graph stays dynamic)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """N x C x 1 x 1 spatial mean (exports as ReduceMean, valid for any H and W)."""
    return x.mean(dim=(2, 3), keepdim=True)


def _bin_weights(n: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """bins x n matrix whose row i averages positions floor(i*n/bins) .. ceil((i+1)*n/bins)-1.

    These are exactly the windows of adaptive average pooling; built from the traced size so the
    exported graph computes them for whatever input size arrives.
    """
    pos = torch.arange(n, device=like.device).unsqueeze(0) * bins  # 1 x n, scaled by bins
    i = torch.arange(bins, device=like.device).unsqueeze(1)  # bins x 1
    # integer-only form of floor(i*n/bins) <= p < ceil((i+1)*n/bins): no division, no float casts,
    # so the exported graph survives FP16 conversion and TensorRT parsing.
    inside = (pos + bins > i * n) & (pos < (i + 1) * n)
    one = torch.ones((), dtype=like.dtype, device=like.device)
    w = torch.where(inside, one, torch.zeros_like(one))
    return w / w.sum(dim=1, keepdim=True)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Adaptive average pooling to ``bins x bins`` written as two small matmuls (dynamic-shape ONNX safe).

    Numerically equal to ``F.adaptive_avg_pool2d(x, bins)``; bins == 1 is a plain mean.
    """
    if bins == 1:
        return global_avg_pool(x)
    wh = _bin_weights(x.shape[2], bins, x)  # bins x H
    ww = _bin_weights(x.shape[3], bins, x)  # bins x W
    return torch.matmul(torch.matmul(wh, x), ww.t())


class PooledConv(nn.Sequential):
    """1x1 conv (with bias) + ReLU for globally pooled 1x1 features.

    No BatchNorm here: with one value per channel per image, BN cannot train on a batch of one (a
    last partial batch, or batch size 1), and it would fail with an error.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """PSPNet-style pyramid pooling: pool to several grids, 1x1 conv each, upsample, concat, fuse."""

    def __init__(self, cin: int, cout: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = bins
        mid = max(cin // len(bins), 1)
        self.stages = nn.ModuleList(ConvBN(cin, mid, 1) if b > 1 else PooledConv(cin, mid) for b in bins)
        self.fuse = ConvBN(cin + mid * len(bins), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for b, conv in zip(self.bins, self.stages, strict=True):
            feats.append(resize_to(conv(adaptive_avg_pool(x, b)), x))
        return self.fuse(torch.cat(feats, dim=1))


class Classifier(nn.Sequential):
    """Dropout then a 1x1 conv to per-pixel class logits."""

    def __init__(self, cin: int, num_classes: int, dropout: float) -> None:
        super().__init__(nn.Dropout(dropout), nn.Conv2d(cin, num_classes, 1))


def init_weights(model: nn.Module) -> None:
    """He init for convs (ReLU nets trained from scratch), BN to identity, zero biases; the classifier
    starts small so the first loss is about log(num_classes) rather than a large spike."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Classifier):
            nn.init.normal_(m[-1].weight, std=0.01)
            nn.init.zeros_(m[-1].bias)
