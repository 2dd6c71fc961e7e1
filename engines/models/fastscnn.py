"""Fast-SCNN (Poudel, Liwicki, Cipolla, 2019): a two-path network sharing its first layers.

Learning-to-downsample (/8) -> global feature extractor (inverted-residual bottlenecks down to /32 and
pyramid pooling) -> feature fusion (upsampled deep features + pointwise shallow features) ->
classifier (two depthwise-separable convs, dropout, 1x1) -> bilinear upsampling to the input size.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.models.errors import check_positive
from engines.models.layers import Classifier, ConvBN, DSConv, PyramidPooling, init_weights, resize_to


def scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by ``width``, rounded to a multiple of ``divisor`` (never below it)."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise (stride), linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        mid = cin * expand
        self.block = nn.Sequential(
            ConvBN(cin, mid, 1),
            ConvBN(mid, mid, 3, stride, groups=mid),
            ConvBN(mid, cout, 1, relu=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def _stage(cin: int, cout: int, n: int, stride: int, expand: int) -> nn.Sequential:
    blocks = [Bottleneck(cin, cout, stride, expand)]
    blocks += [Bottleneck(cout, cout, 1, expand) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class FeatureFusion(nn.Module):
    """Deep /32 features upsampled x4, dilated depthwise + pointwise conv; add pointwise shallow; ReLU."""

    def __init__(self, c_shallow: int, c_deep: int, cout: int) -> None:
        super().__init__()
        # The paper's depthwise conv is dilated by 4: after a x4 upsampling it looks at neighbouring
        # low-resolution cells rather than at interpolated copies of the same one.
        self.deep = nn.Sequential(
            ConvBN(c_deep, c_deep, 3, groups=c_deep, dilation=4),
            ConvBN(c_deep, cout, 1, relu=False),
        )
        self.shallow = ConvBN(c_shallow, cout, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shallow(shallow) + self.deep(resize_to(deep, shallow)))


class FastSCNN(nn.Module):
    """Fast-SCNN: learning-to-downsample, global features with pyramid pooling, fusion at /8."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.1,
        width: float = 1.0,
        expand: int = 6,
    ) -> None:
        super().__init__()
        check_positive("fastscnn", width=width, expand=expand)
        c = lambda n: scaled(n, width)  # noqa: E731 - channel counts of the paper, scaled
        self.width = width
        self.downsample = nn.Sequential(
            ConvBN(in_channels, c(32), 3, stride=2),
            DSConv(c(32), c(48), stride=2),
            DSConv(c(48), c(64), stride=2),
        )
        self.global_features = nn.Sequential(
            _stage(c(64), c(64), 3, 2, expand),  # /16
            _stage(c(64), c(96), 3, 2, expand),  # /32
            _stage(c(96), c(128), 3, 1, expand),
            PyramidPooling(c(128), c(128)),
        )
        self.fusion = FeatureFusion(c(64), c(128), c(128))
        self.head = nn.Sequential(DSConv(c(128), c(128)), DSConv(c(128), c(128)))
        self.classifier = Classifier(c(128), num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.downsample(x)
        deep = self.global_features(shallow)
        y = self.classifier(self.head(self.fusion(shallow, deep)))
        return resize_to(y, x)
