"""`segstream train / eval / predict` as real processes on a few real CamVid images."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.procs import env, run, start

pytest.importorskip("torch")


def segstream(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run(*args, timeout=timeout, env=env(OMP_NUM_THREADS="1"))


def common(camvid: Path, run: Path) -> list[str]:
    return [
        "--data",
        str(camvid / "train"),
        "--val-data",
        str(camvid / "val"),
        "--limit",
        "8",
        "--data-size",
        "120x90",
        "--size",
        "96x72",
        "--batch-size",
        "4",
        "--arch",
        "convpool",
        "--out",
        str(run),
        "--threads",
        "1",
    ]


def test_train_then_eval_then_predict(camvid: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = segstream(
        "train",
        *common(camvid, run),
        "--epochs",
        "1",
        "--loss",
        "ce:1,dice:0.5",
        "--class-weights",
        "median",
        "--optimizer",
        "momentum",
    )
    assert p.returncode == 0, p.stderr
    assert "finished after 1 epochs" in p.stderr
    for f in ("best.pt", "last.pt", "config.json", "log.jsonl", "loss.png", "confusion.png"):
        assert (run / f).is_file(), f
    row = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert row["epoch"] == 1 and 0 <= row["val_miou"] <= 1

    out_json = tmp_path / "eval" / "val.json"
    p = segstream(
        "eval",
        "--model",
        str(run / "best.pt"),
        "--data",
        str(camvid / "val"),
        "--limit",
        "3",
        "--json",
        str(out_json),
        "--threads",
        "1",
    )
    assert p.returncode == 0, p.stderr
    assert "mIoU" in p.stdout and "fps" in p.stdout
    res = json.loads(out_json.read_text())
    assert res["images"] == 3 and len(res["iou"]) == 11 and 0 <= res["miou"] <= 1
    assert np.array(res["confusion"]).sum() > 0
    assert (tmp_path / "eval" / "val_confusion.png").is_file()

    # the same checkpoint exported to ONNX evaluates through ONNX Runtime
    onnx_path = tmp_path / "model.onnx"
    p = segstream("export", str(run / "best.pt"), "-o", str(onnx_path))
    assert p.returncode == 0, p.stderr
    p = segstream(
        "eval",
        "--model",
        str(onnx_path),
        "--data",
        str(camvid / "val"),
        "--limit",
        "2",
        "--threads",
        "1",
        "--json",
        str(tmp_path / "onnx.json"),
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "onnx.json").read_text())["backend"] == "onnxruntime"

    img = sorted((camvid / "val" / "images").glob("*.jpg"))[0]
    p = segstream("predict", "--model", str(run / "best.pt"), str(img), "--out", str(tmp_path / "pred"))
    assert p.returncode == 0, p.stderr
    mask = cv2.imread(str(tmp_path / "pred" / f"{img.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(tmp_path / "pred" / f"{img.stem}_overlay.png"))
    assert mask.shape == (180, 240) and mask.max() < 11  # the image's own size (fixtures are 240x180)
    assert overlay.shape == (180, 240, 3)


def test_sigint_then_resume(camvid: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start("train", *common(camvid, run), "--epochs", "500", env=env(OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 120
    while not (run / "log.jsonl").is_file() or len((run / "log.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    done = len((run / "log.jsonl").read_text().splitlines())
    assert (run / "last.pt").is_file()
    p = segstream("train", "--resume", str(run), "--epochs", str(done + 1))
    assert p.returncode == 0, p.stderr
    epochs = [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, done + 2))


def test_bad_input_is_one_line(tmp_path: Path, camvid: Path) -> None:
    p = segstream("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "dataset folder not found" in p.stderr
    p = segstream("train", "--resume", str(tmp_path / "r"), "--lr", "0.1")
    assert p.returncode == 2 and "cannot change lr" in p.stderr
    p = segstream("eval", "--model", str(tmp_path / "none.pt"), "--data", str(camvid / "val"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
