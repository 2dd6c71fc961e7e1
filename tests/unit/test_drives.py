"""Leave-drive-out validation on the real CamVid fixture frames (3 drives): grouping by file name,
train/eval by drive, k-fold by drive, and the errors a user gets for a drive or regex that does not fit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.data import (
    DatasetError,
    compile_group_regex,
    drive_of,
    load_datasets,
    split_by_drive,
)
from engines.train import TrainConfig, TrainError, train, train_folds
from tests.procs import run
from tests.unit.tiny_training import quiet, tiny

DRIVES = ("0001TP", "0006R0", "0016E5")


def cfg(camvid: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=[str(camvid / "train")],
        out=str(out),
        arch="tiny",
        data_size="96x72",
        batch_size=4,
        epochs=1,
        augment="none",
        warmup_epochs=0,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def cli(*args: str) -> subprocess.CompletedProcess:
    return run(*args, timeout=300)


# ------------------------------------------------------------------ grouping


def test_drive_of_default_and_user_regexes() -> None:
    default = compile_group_regex(None)
    assert drive_of("0001TP_006690.jpg", default) == "0001TP"
    assert drive_of("0006R0_f02430.jpg", default) == "0006R0"
    assert drive_of("Seq05VD_f00000.png", default) == "Seq05VD"
    # named group wins over group 1; no group: the whole match; search, not match-from-start
    named = compile_group_regex(r"(?P<city>[a-z]+)_(?P<drive>\d+)_")
    assert drive_of("aachen_000012_000019.png", named) == "000012"
    assert drive_of("cam-left-17.jpg", compile_group_regex(r"left-\d+")) == "left-17"
    with pytest.raises(DatasetError, match=r"--group-regex '\^\(\[\^_\]\+\)_' does not match .*frame1\.jpg"):
        drive_of("frame1.jpg", default)
    assert drive_of("frame1.jpg", default, unmatched="?") == "?"
    with pytest.raises(DatasetError, match="--group-regex '\\(unclosed' is not a valid regular expression"):
        compile_group_regex("(unclosed")


def test_split_by_drive_holds_out_exactly_that_drive(camvid: Path) -> None:
    data = load_datasets([camvid / "train", camvid / "val"])
    assert sorted(set(data.drives())) == list(DRIVES)
    train_part, val_part = split_by_drive(data, ["0001TP"])
    assert {n.split("_")[0] for n in val_part.names} == {"0001TP"}
    assert "0001TP" not in {n.split("_")[0] for n in train_part.names}
    assert len(train_part) + len(val_part) == len(data)
    # the pixels travel with their names: the held-out images are the dataset's own rows
    i = data.names.index(val_part.names[0])
    assert np.array_equal(val_part.images[0], data.images[i])
    assert np.array_equal(val_part.labels[0], data.labels[i])
    with pytest.raises(
        DatasetError,
        match=r"--holdout-drive 0002XX: no image of that drive; drives found: "
        r"0001TP \(4\), 0006R0 \(4\), 0016E5 \(10\)",
    ):
        split_by_drive(data, ["0002XX"])
    with pytest.raises(DatasetError, match="leaves no training image"):
        split_by_drive(data, list(DRIVES))


# ------------------------------------------------------------------ training


def test_holdout_training_validates_on_the_held_out_drive_only(camvid: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(
        cfg(camvid, run, data=[str(camvid / "train"), str(camvid / "val")], holdout_drive=["0001TP"]),
        console=quiet(),
        builder=tiny,
    )
    config = json.loads((run / "config.json").read_text())["resolved"]
    assert config["train_drives"] == {"0006R0": 4, "0016E5": 10}
    assert config["val_drives"] == {"0001TP": 4}
    assert config["val_images"] == 4 and config["train_images"] == 14
    row = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert row["val_miou"] is not None and res.best_miou == pytest.approx(row["val_miou"])
    # the checkpoint (and so every exported model) carries the drives too
    meta = json.loads(torch.load(run / "best.pt", weights_only=False)["meta"])
    assert meta["extra"]["train_drives"] == {"0006R0": 4, "0016E5": 10}
    assert meta["extra"]["val_drives"] == {"0001TP": 4}


def test_holdout_and_val_data_conflict_and_unknown_drive(camvid: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--holdout-drive 0001TP and --val-data .* give one of them"):
        train(
            cfg(camvid, tmp_path / "a", holdout_drive=["0001TP"], val_data=[str(camvid / "val")]),
            console=quiet(),
            builder=tiny,
        )
    with pytest.raises(DatasetError, match="--holdout-drive Seq05VD: no image of that drive"):
        train(cfg(camvid, tmp_path / "b", holdout_drive=["Seq05VD"]), console=quiet(), builder=tiny)


def test_cli_holdout_errors_are_one_line(camvid: Path, tmp_path: Path) -> None:
    r = cli(
        "train", "--data", str(camvid / "train"), "--holdout-drive", "Seq05VD", "--out", str(tmp_path / "r")
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "--holdout-drive Seq05VD" in lines[0] and "0001TP (4), 0006R0 (4), 0016E5 (4)" in lines[0]
    r = cli("train", "--data", str(camvid / "train"), "--holdout-drive", "0001TP", "--group-regex", "x(")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--group-regex 'x(' is not a valid regular expression" in r.stderr


def test_folds_by_drive_trains_one_run_per_drive(camvid: Path, tmp_path: Path) -> None:
    root = tmp_path / "folds"
    results = train_folds(cfg(camvid, root), console=quiet(), builder=tiny)
    assert list(results) == list(DRIVES)
    summary = json.loads((root / "folds.json").read_text())
    assert summary["complete"] is True
    for d in DRIVES:
        fold = summary["folds"][d]
        run_cfg = json.loads((root / f"fold-{d}" / "config.json").read_text())["resolved"]
        assert run_cfg["val_drives"] == {d: 4}
        assert d not in run_cfg["train_drives"] and len(run_cfg["train_drives"]) == 2
        assert fold["val_miou"] == pytest.approx(results[d].best_miou)
    assert summary["mean_miou"] == pytest.approx(np.mean([summary["folds"][d]["val_miou"] for d in DRIVES]))
    with pytest.raises(TrainError, match="--folds-by-drive needs at least 2 drives"):
        train_folds(cfg(camvid, tmp_path / "one", data=[str(camvid / "val")]), console=quiet(), builder=tiny)


# ------------------------------------------------------------------ evaluation


@pytest.fixture(scope="module")
def trained_ckpt(camvid: Path, tmp_path_factory) -> Path:
    """A real fastscnn checkpoint trained 2 epochs with drive 0001TP held out (so it has train_drives)."""
    run = tmp_path_factory.mktemp("eval") / "run"
    train(
        cfg(camvid, run, arch="fastscnn", holdout_drive=["0001TP"], epochs=2, data_size=None, size="96x72"),
        console=quiet(),
    )
    return run / "best.pt"


def test_eval_by_drive_reports_each_drive_and_their_mean(
    camvid: Path, trained_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "all.json"
    r = cli(
        "eval",
        "--model",
        str(trained_ckpt),
        "--data",
        str(camvid / "train"),
        "--by-drive",
        "--json",
        str(out),
        "--warmup",
        "0",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert sorted(s["by_drive"]) == list(DRIVES)
    assert [s["by_drive"][d]["images"] for d in DRIVES] == [4, 4, 4]
    assert s["mean_drive_miou"] == pytest.approx(np.mean([s["by_drive"][d]["miou"] for d in DRIVES]))
    # the model says which drives it trained on; eval marks them
    assert {d: v["trained_on"] for d, v in s["by_drive"].items()} == {
        "0001TP": False,
        "0006R0": True,
        "0016E5": True,
    }
    assert "not held-out" in r.stdout
    # --drive keeps one drive: its figure equals that drive's row of the grouped run
    one = tmp_path / "one.json"
    r = cli(
        "eval",
        "--model",
        str(trained_ckpt),
        "--data",
        str(camvid / "train"),
        "--drive",
        "0001TP",
        "--json",
        str(one),
        "--warmup",
        "0",
    )
    assert r.returncode == 0, r.stderr
    o = json.loads(one.read_text())
    assert o["images"] == 4 and o["drives"] == ["0001TP"]
    assert o["miou"] == pytest.approx(s["by_drive"]["0001TP"]["miou"])
    assert "not held-out" not in r.stdout


def test_eval_unknown_drive_lists_the_drives_found(camvid: Path, trained_ckpt: Path) -> None:
    r = cli("eval", "--model", str(trained_ckpt), "--data", str(camvid / "val"), "--drive", "0001TP")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--drive 0001TP: no image of that drive; drives found: 0016E5 (6)" in r.stderr
