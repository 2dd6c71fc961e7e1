"""RGB-D segmentation: Fast-SCNN with depth fused early (a 4th input channel) or at 1/8 (mid fusion).

Training feeds both one float32 N x 4 x H x W tensor (normalized RGB, then normalized depth:
engines.depth). An exported model takes two inputs instead, ``image`` (N x 3 x H x W) and ``depth``
(N x 1 x H x W), through ``RGBDInputs``: early fusion concatenates them inside the graph, mid fusion feeds
``depth`` straight into its depth branch (``forward_rgbd``), so the graph has no concat-then-slice.

- early: the RGB network with a 4-channel first convolution (``build_model(arch, in_channels=4)``).
- mid (``fastscnn-rgbd``): a light depth branch (three strided convolutions to 1/8) whose features are
  added to Fast-SCNN's learning-to-downsample output, weighted per pixel and channel by an attention
  gate computed from both: ``rgb + sigmoid(gate([rgb, depth])) * depth`` (cf. ACNet, Hu et al. 2019).
"""

from __future__ import annotations

import torch
from torch import nn

from engines.models.fastscnn import FastSCNN, scaled
from engines.models.layers import ConvBN, init_weights, resize_to

FUSIONS = ("early", "mid")


class AttentionAdd(nn.Module):
    """rgb + sigmoid(1x1 conv of [rgb, depth]) * depth: the gate decides where depth helps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.Sigmoid())

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return rgb + self.gate(torch.cat([rgb, depth], dim=1)) * depth


class FastSCNNRGBD(FastSCNN):
    """Fast-SCNN with a depth branch fused at 1/8 by attention-weighted addition (4-channel input)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 4,
        dropout: float = 0.1,
        width: float = 1.0,
        expand: int = 6,
        depth_width: int = 32,
    ) -> None:
        if in_channels != 4:
            raise ValueError(f"fastscnn-rgbd takes RGB + depth (4 channels), got in_channels={in_channels}")
        super().__init__(num_classes, in_channels=3, dropout=dropout, width=width, expand=expand)
        c8 = scaled(64, width)
        dw = max(8, int(depth_width))
        self.depth_branch = nn.Sequential(
            ConvBN(1, dw // 2, 3, stride=2),
            ConvBN(dw // 2, dw, 3, stride=2),
            ConvBN(dw, c8, 3, stride=2, relu=False),
        )
        self.fuse = AttentionAdd(c8)
        init_weights(self.depth_branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_rgbd(x[:, :3], x[:, 3:4])

    def forward_rgbd(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Logits from the colour and the depth input apart (the two inputs of an exported model)."""
        shallow = self.downsample(rgb)
        d = self.depth_branch(depth)
        shallow = self.fuse(shallow, resize_to(d, shallow))
        deep = self.global_features(shallow)
        y = self.classifier(self.head(self.fusion(shallow, deep)))
        return resize_to(y, rgb)


def forward_rgbd(net: nn.Module, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """An RGB-D network's logits from its two inputs: a network with its own ``forward_rgbd`` (mid
    fusion) takes them apart; any other 4-channel network (early fusion) takes them concatenated."""
    two = getattr(net, "forward_rgbd", None)
    return two(image, depth) if two is not None else net(torch.cat([image, depth], dim=1))


class RGBDInputs(nn.Module):
    """A 4-channel RGB-D network as a module of two inputs, ``(image, depth)``: what export traces."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return forward_rgbd(self.net, image, depth)


#: networks that only exist with depth (built by name through engines.models.build_model)
RGBD_MODELS = {"fastscnn-rgbd": FastSCNNRGBD}


def rgbd_arch(arch: str, fusion: str) -> tuple[str, int]:
    """(architecture to build, input channels) for ``--modality rgbd --fusion F`` on ``arch``."""
    if fusion not in FUSIONS:
        raise ValueError(f"--fusion '{fusion}': must be one of {', '.join(FUSIONS)}")
    if fusion == "early":
        return arch, 4
    if arch not in ("fastscnn", "fastscnn-rgbd"):
        raise ValueError(f"--fusion mid is built for fastscnn (a depth branch fused at 1/8), not '{arch}'")
    return "fastscnn-rgbd", 4
