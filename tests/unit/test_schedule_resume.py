"""A time-boxed run (--time-limit with --schedule-time) resumed with --resume continues its learning-rate
anneal where it stopped instead of starting the schedule over at the top (what a CPU training made of
several sessions needs)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engines.train import TrainConfig, resume, train
from tests.unit.tiny_training import quiet, tiny


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
