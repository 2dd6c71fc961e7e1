"""A tiny network and a silent console, shared by the test modules that train for a few steps."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from engines.train import TrainConfig


class TinyNet(nn.Module):
    """conv-bn-relu-conv: enough to overfit four images in a few steps."""

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(dropout)
        )
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny(arch: str, **kw) -> nn.Module:
    """A `builder` for Trainer/train/resume that ignores the arch name."""
    return TinyNet(**kw)


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=120)  # noqa: SIM115


def tiny_config(camvid: Path, out: Path, **kw) -> TrainConfig:
    """A few-step run of the tiny net on the fixture: train/ for training, val/ for validation, no
    augmentation or warm-up, one thread; ``kw`` overrides or adds any TrainConfig field."""
    base = dict(
        data=[str(camvid / "train")],
        val_data=[str(camvid / "val")],
        out=str(out),
        arch="tiny",
        augment="none",
        warmup_epochs=0,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)
