"""BiSeNet V2 (Yu et al., 2020/2021): a bilateral network with guided aggregation.

Detail branch: wide, shallow plain convs down to /8 (spatial detail). Semantic branch: narrow, deep,
down to /32 (stem, gather-and-expand layers, context embedding). Bilateral guided aggregation lets each
branch gate the other with sigmoid attention before they are summed; a small head classifies at /8
and the logits are upsampled bilinearly to the input size. (The paper's training-only booster heads
are left out: forward returns the main logits only.)
"""

from __future__ import annotations

import torch
from torch import nn

from engines.models.errors import check_positive
from engines.models.layers import (
    Classifier,
    ConvBN,
    PooledConv,
    global_avg_pool,
    init_weights,
    resize_to,
)


class DetailBranch(nn.Sequential):
    """Three stages of 3x3 conv+BN+ReLU, each starting with stride 2: 64, 64, 128 channels at /8."""

    def __init__(self, cin: int, c: tuple[int, int, int] = (64, 64, 128)) -> None:
        super().__init__(
            ConvBN(cin, c[0], 3, 2), ConvBN(c[0], c[0], 3),
            ConvBN(c[0], c[1], 3, 2), ConvBN(c[1], c[1], 3), ConvBN(c[1], c[1], 3),
            ConvBN(c[1], c[2], 3, 2), ConvBN(c[2], c[2], 3), ConvBN(c[2], c[2], 3),
        )  # fmt: skip


class Stem(nn.Module):
    """/4 stem: a strided conv, then a conv path and a max-pool path side by side, concatenated and fused."""

    def __init__(self, cin: int, cout: int = 16) -> None:
        super().__init__()
        self.conv = ConvBN(cin, cout, 3, 2)
        self.left = nn.Sequential(ConvBN(cout, cout // 2, 1), ConvBN(cout // 2, cout, 3, 2))
        self.right = nn.MaxPool2d(3, 2, 1)
        self.fuse = ConvBN(2 * cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-expand layer: 3x3 conv gathers, depthwise 3x3 expands x6 (strided when stride 2),
    1x1 projects back; residual add (a depthwise+pointwise shortcut when striding), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 6) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = [ConvBN(cin, cin, 3), ConvBN(cin, mid, 3, stride, groups=cin, relu=False)]
        if stride == 2:
            layers.append(ConvBN(mid, mid, 3, groups=mid, relu=False))
        layers.append(ConvBN(mid, cout, 1, relu=False))
        self.body = nn.Sequential(*layers)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBN(cin, cin, 3, stride, groups=cin, relu=False), ConvBN(cin, cout, 1, relu=False)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pooling -> 1x1 conv, broadcast-added to the features, then a 3x3 conv.

    The paper normalizes the pooled vector with BN; that cannot train on a batch of one (one value
    per channel), so the 1x1 conv carries a bias instead (PooledConv).
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.point = PooledConv(c, c)
        self.out = ConvBN(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.point(global_avg_pool(x)))


class SemanticBranch(nn.Sequential):
    """Stem (/4), gather-and-expand stages at /8, /16, /32, context embedding."""

    def __init__(self, cin: int, c: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__(
            Stem(cin, c[0]),
            GatherExpand(c[0], c[1], 2), GatherExpand(c[1], c[1]),
            GatherExpand(c[1], c[2], 2), GatherExpand(c[2], c[2]),
            GatherExpand(c[2], c[3], 2), GatherExpand(c[3], c[3]), GatherExpand(c[3], c[3]),
            GatherExpand(c[3], c[3]),
            ContextEmbedding(c[3]),
        )  # fmt: skip


class GuidedAggregation(nn.Module):
    """Bilateral guided aggregation: detail (/8) and semantic (/32) features gate each other, are summed."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.detail_keep = nn.Sequential(ConvBN(c, c, 3, groups=c, relu=False), nn.Conv2d(c, c, 1))
        self.detail_down = nn.Sequential(ConvBN(c, c, 3, 2, relu=False), nn.AvgPool2d(3, 2, 1))
        self.semantic_up = ConvBN(c, c, 3, relu=False)
        self.semantic_keep = nn.Sequential(ConvBN(c, c, 3, groups=c, relu=False), nn.Conv2d(c, c, 1))
        self.out = ConvBN(c, c, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        high = self.detail_keep(detail) * torch.sigmoid(resize_to(self.semantic_up(semantic), detail))
        low = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.out(high + resize_to(low, detail))


class BiSeNetV2(nn.Module):
    """BiSeNet V2: detail branch (/8) + semantic branch (/32), bilateral guided aggregation."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.1,
        head_channels: int = 128,
    ) -> None:
        super().__init__()
        check_positive("bisenetv2", head_channels=head_channels)
        self.detail = DetailBranch(in_channels)
        self.semantic = SemanticBranch(in_channels)
        self.aggregate = GuidedAggregation(128)
        self.head = ConvBN(128, head_channels, 3)
        self.classifier = Classifier(head_channels, num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aggregate(self.detail(x), self.semantic(x))
        return resize_to(self.classifier(self.head(y)), x)
