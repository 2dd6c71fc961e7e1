"""Segmentation networks by name: ``build_model("fastscnn", num_classes=11)``.

Every model takes float32 N x C x H x W normalized input (C = 3 for RGB, 4 for RGB-D) and returns
logits N x num_classes x H x W at the input resolution. All export to ONNX with dynamic batch/H/W.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from engines.models.convpool import ConvPool
from engines.models.errors import ModelError, UnknownModelError
from engines.models.fastscnn import FastSCNN
from engines.models.fusion import RGBD_MODELS
from engines.models.lraspp_lite import LRASPPLite0
from engines.models.twobranch import BiSeNetV2
from engines.models.unet import UNet

__all__ = [
    "MODELS",
    "ModelError",
    "UnknownModelError",
    "build_model",
    "describe",
    "has_pretrained",
    "input_channels",
    "input_normalization",
    "load_pretrained",
    "model_summary",
]


# name -> builder(num_classes, in_channels, dropout, **kwargs); the order is the one `segstream models` shows.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "fastscnn": FastSCNN,
    "lite0-lraspp": LRASPPLite0,
    "bisenetv2": BiSeNetV2,
    "unet": UNet,
    "convpool": ConvPool,
}


def describe(name: str) -> str:
    """One-line description of a registered network (first docstring line of its builder)."""
    doc = inspect.getdoc(_builder(name)) or ""
    return doc.splitlines()[0].rstrip(".") if doc else name


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        # RGB-D-only networks (4-channel input) are built by name but not listed with the RGB ones
        return MODELS[name] if name in MODELS else RGBD_MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model architecture '{name}' (valid: {', '.join(MODELS)})") from None


def build_model(
    arch: str, num_classes: int, in_channels: int = 3, dropout: float = 0.1, **kwargs
) -> nn.Module:
    """Build the network registered as ``arch``; extra keyword arguments go to its builder (e.g. width)."""
    builder = _builder(arch)
    if int(num_classes) < 1:
        raise ModelError(f"{arch}: num_classes must be >= 1, got {num_classes}")
    if int(in_channels) < 1:
        raise ModelError(f"{arch}: in_channels must be >= 1, got {in_channels}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ModelError(f"{arch}: dropout must be in [0, 1), got {dropout}")
    params = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = [p for p in params if p not in ("self", "num_classes", "in_channels", "dropout")]
        raise ModelError(
            f"{arch}: unknown option(s) {', '.join(unknown)} (valid: {', '.join(valid) or 'none'})"
        )
    return builder(
        num_classes=int(num_classes), in_channels=int(in_channels), dropout=float(dropout), **kwargs
    )


def input_channels(model: nn.Module) -> int:
    """Channel count the model expects (that of its first convolution)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ModelError(f"{type(model).__name__}: no convolution found to infer the input channels")


def model_summary(model: nn.Module, size: tuple[int, int] = (480, 360)) -> tuple[int, float]:
    """(parameter count, GFLOPs of one forward pass at ``size`` = (width, height), batch 1).

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls,
    one multiply-add = 2 FLOPs; element-wise ops (BN, ReLU, resize) are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    w, h = size
    x = torch.zeros(1, input_channels(model), h, w)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return params, counter.get_total_flops() / 1e9


def has_pretrained(model: nn.Module) -> bool:
    """Whether the network has an encoder with shipped ImageNet weights (``load_pretrained``)."""
    return callable(getattr(model, "load_pretrained", None))


def load_pretrained(model: nn.Module) -> list[str]:
    """Load the network's pretrained encoder weights (a training-time extra; exported models never need
    it). Returns the checkpoint keys deliberately left out."""
    if not has_pretrained(model):
        raise ModelError(f"{type(model).__name__} has no pretrained encoder weights")
    return model.load_pretrained()


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) on [0, 1] pixels a network's pretrained encoder expects, or None for the default."""
    mean, std = getattr(model, "input_mean", None), getattr(model, "input_std", None)
    if mean is None or std is None:
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
