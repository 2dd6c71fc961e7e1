"""`segstream train --init CKPT`: a new run (fresh optimizer and schedule) that starts from the weights of
a finished one, e.g. a second annealing cycle. The weights must really be the checkpoint's, a checkpoint of
another arch or shape is refused in one line, and a checkpoint that trained on a validation drive is
flagged (validation would measure memory of that drive)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from engines.train import TrainConfig, Trainer, TrainError, load_checkpoint, train
from tests.procs import run
from tests.unit.tiny_training import quiet, tiny, tiny_config


def cfg(camvid: Path, out: Path, **kw) -> TrainConfig:
    return tiny_config(camvid, out, **{"data_size": "96x72", "batch_size": 4, "epochs": 2, "lr": 0.01, **kw})


@pytest.fixture(scope="module")
def first_run(camvid: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("init") / "first"
    train(cfg(camvid, run), console=quiet(), builder=tiny)
    return run


def test_init_starts_from_the_checkpoint_weights_with_a_fresh_schedule(
    camvid: Path, first_run: Path, tmp_path: Path
) -> None:
    ck = load_checkpoint(first_run / "best.pt")
    t = Trainer(
        cfg(camvid, tmp_path / "second", init=str(first_run / "best.pt")), console=quiet(), builder=tiny
    )
    t.setup()
    mine = t.model.state_dict()
    assert mine.keys() == ck["model"].keys()
    for k, v in ck["model"].items():
        assert torch.equal(mine[k].cpu(), v), k
    assert t.epoch == 0 and t.time_progress == 0.0  # a new run, not a resume
    assert t.meta.extra["encoder_init"] == "init:best.pt"
    # without --init the same config starts elsewhere (the check above is not vacuous)
    fresh = Trainer(cfg(camvid, tmp_path / "fresh"), console=quiet(), builder=tiny)
    fresh.setup()
    assert any(not torch.equal(fresh.model.state_dict()[k].cpu(), v) for k, v in ck["model"].items())


def test_init_run_trains_and_records_where_it_started(camvid: Path, first_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "second"
    train(cfg(camvid, run, init=str(first_run / "best.pt"), epochs=1), console=quiet(), builder=tiny)
    saved = json.loads((run / "config.json").read_text())
    assert saved["init"] == str(first_run / "best.pt")
    assert (run / "best.pt").is_file()


def test_init_refuses_missing_and_misfitting_checkpoints(
    camvid: Path, first_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainError, match="--init .*not found"):
        Trainer(cfg(camvid, tmp_path / "a", init=str(tmp_path / "nope.pt")), console=quiet(), builder=tiny)
    with pytest.raises(TrainError, match="arch 'tiny' is not --arch 'convpool'"):
        Trainer(
            cfg(camvid, tmp_path / "b", arch="convpool", init=str(first_run / "best.pt")),
            console=quiet(),
        ).setup()


def test_init_from_a_run_that_trained_on_the_validation_drive_is_flagged(
    camvid: Path, first_run: Path, tmp_path: Path
) -> None:
    # the first run trained on every drive of train/, so holding out 0001TP now validates on a seen drive
    out = io.StringIO()
    Trainer(
        cfg(
            camvid,
            tmp_path / "leak",
            data=[str(camvid / "train"), str(camvid / "val")],
            val_data=None,
            holdout_drive=["0001TP"],
            init=str(first_run / "best.pt"),
        ),
        console=Console(file=out, width=200),
        builder=tiny,
    ).setup()
    assert "trained on validation drive(s) 0001TP" in out.getvalue()


def test_cli_init_error_is_one_line(camvid: Path, tmp_path: Path) -> None:
    r = run("train", "--data", camvid / "train", "--init", "nope.pt", "--out", tmp_path / "x", timeout=120)
    assert r.returncode != 0
    assert "--init nope.pt: file not found" in r.stderr
    assert "Traceback" not in r.stderr
