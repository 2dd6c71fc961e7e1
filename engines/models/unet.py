"""A small U-Net (Ronneberger et al., 2015): a conv/pool encoder, a decoder that upsamples and
concatenates the encoder's features at each scale (skip connections), and a per-pixel classifier.

Upsampling is bilinear to the skip's exact size followed by a 1x1 conv (instead of a transposed conv),
so odd input sizes work and the ONNX graph stays dynamic.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.models.errors import check_positive
from engines.models.layers import Classifier, ConvBN, init_weights, resize_to


class DoubleConv(nn.Sequential):
    """Two 3x3 conv+BN+ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(ConvBN(cin, cout, 3), ConvBN(cout, cout, 3))


class Up(nn.Module):
    """Upsample to the skip's size, 1x1 conv to its channel count, concatenate, double conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.reduce = ConvBN(cin, cout, 1)
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.reduce(resize_to(x, skip)), skip], dim=1))


class UNet(nn.Module):
    """U-Net: conv encoder-decoder with skip connections at every scale."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.1,
        base_channels: int = 16,
        depth: int = 4,
    ) -> None:
        super().__init__()
        check_positive("unet", base_channels=base_channels, depth=depth)
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, chans[0])
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.down = nn.ModuleList(DoubleConv(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(Up(chans[i + 1], chans[i]) for i in reversed(range(depth)))
        self.classifier = Classifier(chans[0], num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(self.pool(skips[-1])))
        y = skips.pop()
        for block in self.up:
            y = block(y, skips.pop())
        return resize_to(self.classifier(y), x)
