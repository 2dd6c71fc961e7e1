"""Models for the export/runtime/engine tests: a briefly trained Fast-SCNN checkpoint and a tiny conv net.

Random weights give near-ties everywhere (logits ~1e-6 apart), so a mask-agreement test on them says
little; a few optimizer steps on real CamVid images give the logits real margins, like a trained model.
Built once per test session and shared by the test modules that import it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from engines.meta import ClassTable, ModelMeta
from engines.runtime.torch import write_checkpoint

TRAIN_SIZE = (256, 192)  # (w, h): small, so training and inference stay fast on 2 cores
_CACHE: dict[str, Path] = {}


def camvid_meta(camvid: Path, arch: str, size: tuple[int, int] = TRAIN_SIZE, max_batch: int = 4) -> ModelMeta:
    return ModelMeta(
        arch=arch,
        classes=ClassTable.from_json_file(camvid / "classes.json"),
        input_size=size,
        max_batch=max_batch,
    )


def read_pairs(split_dir: Path, count: int, size: tuple[int, int] = TRAIN_SIZE):
    imgs = sorted((split_dir / "images").glob("*.jpg"))
    picks = [imgs[int(i)] for i in np.linspace(0, len(imgs) - 1, count)]
    frames, labels = [], []
    for p in picks:
        frames.append(cv2.imread(str(p)))
        lab = cv2.imread(str(split_dir / "labels" / (p.stem + ".png")), cv2.IMREAD_GRAYSCALE)
        labels.append(cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST))
    return frames, labels


def trained_fastscnn(camvid: Path, root: Path, steps: int = 8) -> Path:
    """Fast-SCNN fitted for a few Adam steps on 4 CamVid train images; its checkpoint path (cached)."""
    if "fastscnn" in _CACHE and _CACHE["fastscnn"].is_file():
        return _CACHE["fastscnn"]
    from engines.models import build_model
    from engines.runtime.preprocess import prepare_batch

    torch.manual_seed(0)
    meta = camvid_meta(camvid, "fastscnn")
    args = {"num_classes": meta.classes.num_classes, "in_channels": 3, "dropout": 0.1}
    net = build_model("fastscnn", **args)
    frames, labels = read_pairs(camvid / "train", 4)
    x = torch.from_numpy(prepare_batch(frames, meta))
    y = torch.from_numpy(np.stack(labels).astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=meta.classes.ignore_index)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    # 8 steps leave BatchNorm's running statistics far from the data's: re-estimate them exactly
    # (cumulative average over the batch), else eval mode collapses to one class.
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net(x)
    net.eval()
    root.mkdir(parents=True, exist_ok=True)
    _CACHE["fastscnn"] = write_checkpoint(root / "fastscnn.pt", net, meta, args)
    return _CACHE["fastscnn"]


class TinyNet(nn.Module):
    """Two convolutions and a bilinear upsample: exports in a second, any H/W."""

    def __init__(self, num_classes: int = 11, in_channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, num_classes, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return nn.functional.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
