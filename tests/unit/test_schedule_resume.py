"""A time-boxed run (--time-limit with --schedule-time) resumed with --resume continues its learning-rate
anneal where it stopped instead of starting the schedule over at the top (what a CPU training made of
several sessions needs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from engines.train import TrainConfig, resume, train


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny(arch: str, **kw) -> nn.Module:
    return TinyNet(**kw)


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=120)  # noqa: SIM115


def test_resumed_time_boxed_run_keeps_annealing(camvid: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(
        data=[str(camvid / "train")],
        val_data=[],
        out=str(run),
        arch="tiny",
        data_size="48x36",
        batch_size=4,
        epochs=100_000,
        lr=0.01,
        augment="none",
        warmup_epochs=0,
        threads=1,
        schedule="cosine",
        schedule_time=True,
        time_limit=0.1,  # 6 s: the whole cosine anneal happens inside it
    )
    first = train(cfg, console=quiet(), builder=tiny)
    assert first.stopped == "time-limit"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] < 0.3 * 0.01  # annealed by the end of the time box
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["scheduler"]["time_progress"] > 0.9
    # a second session with a much longer time box: the old code restarted the anneal at the top (lr ~0.01)
    resume(run, {"time_limit": 2.0, "epochs": first.epochs_done + 2}, console=quiet(), builder=tiny)
    after = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][len(rows) :]
    assert len(after) == 2
    assert all(r["lr"] <= rows[-1]["lr"] + 1e-9 for r in after), (rows[-1]["lr"], [r["lr"] for r in after])
