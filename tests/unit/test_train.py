"""Training loop on a handful of real CamVid images with a tiny network: optimizers, schedules,
checkpoints, exact resume after an interrupt, early stopping, time limit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from engines.train import (
    OPTIMIZERS,
    TrainConfig,
    Trainer,
    TrainError,
    lr_factor,
    resume,
    train,
)
from tests.unit.tiny_training import TinyNet, quiet, tiny, tiny_config


class Interrupting(TinyNet):
    """Sends this process a real SIGINT at its 3rd training forward pass."""

    calls = 0

    def forward(self, x):
        if self.training:
            Interrupting.calls += 1
            if Interrupting.calls == 3:
                os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)


def cfg(camvid: Path, out: Path, **kw) -> TrainConfig:
    return tiny_config(camvid, out, **{"data_size": "120x90", "limit": 4, "batch_size": 2, "epochs": 2, **kw})


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_decreases_the_loss(camvid: Path, tmp_path: Path, name: str) -> None:
    lr = {"gd": 0.5, "sgd": 0.2, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05}.get(name, 0.01)
    c = cfg(
        camvid,
        tmp_path / name,
        optimizer=name,
        lr=lr,
        epochs=6,
        val_data=[],
        schedule="constant",
        dropout=0.0,
        weight_decay=0.0,
    )
    tr = Trainer(c, console=quiet(), builder=tiny)
    tr.setup()
    res = tr.fit(tmp_path / name)
    rows = log(tmp_path / name)
    assert res.epochs_done == 6 and len(rows) == 6
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], (name, rows)
    # gd takes exactly one step per epoch
    assert tr.global_step == (6 if name == "gd" else 12)


def test_schedules() -> None:
    assert lr_factor("poly", 0.0, 10, 5, 0, 30) == 1.0
    assert lr_factor("poly", 1.0, 99, 5, 0, 30) == 0.0
    assert lr_factor("cosine", 0.5, 50, 0, 0, 30) == pytest.approx(0.5)
    assert lr_factor("step", 0.5, 50, 0, 65, 30) == pytest.approx(0.01)
    assert lr_factor("cosine", 0.0, 0, 4, 0, 30) == pytest.approx(0.25)  # warm-up step 1 of 4
    with pytest.raises(TrainError):
        lr_factor("bogus", 0.0, 0, 0, 0, 1)


def test_checkpoints_plots_and_regularizers(camvid: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(
        cfg(
            camvid,
            run,
            augment="all",
            size="64x48",
            loss="ce:1,dice:0.5",
            class_weights="median",
            l1=1e-5,
            dropout=0.2,
        ),
        console=quiet(),
        builder=tiny,
    )
    assert res.stopped == "done" and res.epochs_done == 2
    for f in (
        "config.json",
        "log.jsonl",
        "last.pt",
        "best.pt",
        "loss.png",
        "miou.png",
        "lr.png",
        "confusion.png",
    ):
        assert (run / f).is_file(), f
    rows = log(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["val_miou"] <= 1 and r["images_per_s"] > 0 for r in rows)
    best = torch.load(run / "best.pt", weights_only=False)
    last = torch.load(run / "last.pt", weights_only=False)
    assert best["format"] == "segstream-checkpoint" and best["arch"] == "tiny"
    assert best["arch_args"] == {"num_classes": 11, "in_channels": 3, "dropout": 0.2}
    assert "optimizer" not in best and {"optimizer", "scheduler", "rng", "config"} <= set(last)
    assert json.loads(best["meta"])["input_size"] == [120, 90]
    with pytest.raises(TrainError, match="--resume"):
        train(cfg(camvid, run), console=quiet(), builder=tiny)


def test_resume_after_sigint_is_exact(camvid: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    train(cfg(camvid, ref, epochs=3, augment="all", size="64x48"), console=quiet(), builder=tiny)
    run = tmp_path / "run"
    Interrupting.calls = 0
    res = train(
        cfg(camvid, run, epochs=3, augment="all", size="64x48"),
        console=quiet(),
        builder=lambda arch, **kw: Interrupting(**kw),
    )
    assert res.stopped == "interrupted" and res.epochs_done == 1  # stopped mid-epoch 2
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["epoch"] == 1 and ck["step_in_epoch"] == 1
    res = resume(run, {}, console=quiet(), builder=tiny)
    assert res.stopped == "done" and res.epochs_done == 3
    got, want = log(run), log(ref)
    assert [r["epoch"] for r in got] == [1, 2, 3]
    for a, b in zip(got, want, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"])


def test_time_limit_and_early_stop(camvid: Path, tmp_path: Path) -> None:
    res = train(cfg(camvid, tmp_path / "t", epochs=50, time_limit=1e-4), console=quiet(), builder=tiny)
    assert res.stopped == "time-limit" and (tmp_path / "t" / "last.pt").is_file()
    assert res.best_miou >= 0  # the weights it stopped with were validated
    assert (tmp_path / "t" / "best.pt").is_file()
    # a BN-free net at lr 0 never improves after the first validation: patience 2 stops at epoch 3
    frozen = lambda arch, num_classes, **kw: nn.Conv2d(3, num_classes, 1)
    res = train(cfg(camvid, tmp_path / "e", epochs=20, lr=0.0, patience=2), console=quiet(), builder=frozen)
    assert res.stopped == "early-stop" and res.epochs_done == 3


def test_bad_options(camvid: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="unknown optimizer"):
        Trainer(cfg(camvid, tmp_path, optimizer="lbfgs"), console=quiet(), builder=tiny)
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="CUDA"):
            Trainer(cfg(camvid, tmp_path, device="cuda"), console=quiet(), builder=tiny)


def test_bf16_and_channels_last_code_path_on_cpu(camvid: Path, tmp_path: Path) -> None:
    """The CUDA path's autocast/channels_last plumbing, exercised on the CPU."""
    c = cfg(
        camvid,
        tmp_path / "b",
        epochs=1,
        precision="bf16",
        augment="all",
        size="64x48",
        extra={"channels_last": True},
    )
    res = train(c, console=quiet(), builder=tiny)
    assert res.stopped == "done" and log(tmp_path / "b")[0]["val_miou"] is not None
