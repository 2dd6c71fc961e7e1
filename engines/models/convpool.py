"""The seed network: conv -> pool -> conv -> pool, made fully convolutional.

A per-pixel 1x1 classifier replaces the dense layer, and its /4 logits are upsampled bilinearly to the
input size. The simplest baseline: small receptive field, no context, but cheap and end-to-end.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.models.errors import check_positive
from engines.models.layers import Classifier, ConvBN, init_weights, resize_to


class ConvPool(nn.Module):
    """Seed baseline: conv3x3+pool, conv3x3+pool, per-pixel 1x1 classifier."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.1,
        channels: tuple[int, ...] = (32, 64),
    ) -> None:
        super().__init__()
        check_positive("convpool", stages=len(channels), min_channels=min(channels, default=0))
        layers: list[nn.Module] = []
        cin = in_channels
        for c in channels:
            layers += [ConvBN(cin, c, 3), nn.MaxPool2d(2, 2, ceil_mode=True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(cin, num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.classifier(self.features(x)), x)
