"""Uncertainty maps (entropy, margin) from logits, on every backend, and the calibration table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.calibration import Calibration, MapError, maps_from_logits
from stream.cli import main
from stream.config import ASSETS


def test_maps_of_known_logits() -> None:
    # pixel 0: certain class 2; pixel 1: uniform over 4 classes; pixel 2: a tie between classes 0 and 1
    logits = np.array([[0, 0, 30, 0], [1, 1, 1, 1], [5, 5, -30, -30]], np.float32).T.reshape(1, 4, 1, 3)
    ids, maps = maps_from_logits(logits, ["confidence", "entropy", "margin"])
    assert ids.shape == (1, 1, 3) and ids[0, 0, 0] == 2 and ids[0, 0, 2] in (0, 1)
    conf, ent, margin = (maps[k][0, 0].tolist() for k in ("confidence", "entropy", "margin"))
    assert conf == [255, 64, 128]  # 1, 1/4, 1/2 of 255, rounded
    assert ent[0] == 0 and ent[1] == 255  # no entropy; entropy = ln 4 = the maximum for 4 classes
    assert ent[2] == round(255 * math.log(2) / math.log(4))  # two equal classes: ln 2 / ln 4
    assert margin == [255, 0, 0]


def test_unknown_map_is_refused() -> None:
    with pytest.raises(MapError, match="'?variance'?.*valid: confidence, entropy, margin"):
        maps_from_logits(np.zeros((1, 3, 2, 2), np.float32), ["variance"])


def test_ece_and_bins() -> None:
    c = Calibration(bins=10)
    # 100 pixels at confidence 0.95 with 95 right: calibrated; 100 at 0.55 with 25 right: overconfident by 0.3
    conf = np.r_[np.full(100, 0.95), np.full(100, 0.55)]
    right = np.r_[np.arange(100) < 95, np.arange(100) < 25]
    ent = np.where(right, 0.1, 0.6)
    c.update(conf, right, ent)
    s = c.summary()
    assert s["bins"][9]["pixels"] == 100 and s["bins"][9]["accuracy"] == pytest.approx(0.95)
    assert s["bins"][5]["pixels"] == 100 and s["bins"][5]["accuracy"] == pytest.approx(0.25)
    assert s["ece"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.30)
    assert s["mean_entropy_right"] == pytest.approx(0.1) and s["mean_entropy_wrong"] == pytest.approx(0.6)
    # uint8 confidence (the runtime maps) lands in the same bins; 255 falls in the top bin, not past it
    u = Calibration(bins=10)
    u.update(np.array([255, 0, 140], np.uint8), np.array([True, False, True]))
    assert [b["pixels"] for b in u.summary()["bins"]] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]


@pytest.fixture(scope="module")
def frame(camvid: Path) -> np.ndarray:
    img = cv2.imread(str(camvid / "val" / "images" / "0016E5_07959.jpg"), cv2.IMREAD_COLOR)
    assert img is not None
    return img


@pytest.mark.parametrize("model", ["default.onnx", "default.pt"])
def test_runtime_maps_agree_with_the_default_outputs(frame: np.ndarray, model: str) -> None:
    from engines.runtime import load

    rt = load(ASSETS / model, device="cpu", threads=1)
    batch = rt.prepare([frame])
    ids0, conf0 = rt.run(batch, confidence=True)
    ids, maps = rt.run_maps(batch, ("confidence", "entropy", "margin"))
    assert (ids == ids0).mean() > 0.999  # same argmax (float ties aside)
    assert np.abs(maps["confidence"].astype(int) - conf0.astype(int)).max() <= 1
    ent, margin = maps["entropy"].astype(int), maps["margin"].astype(int)
    # where the model is sure, entropy is low and the margin high; the reverse where it is unsure
    sure, unsure = conf0 > 240, conf0 < 128
    assert sure.sum() > 1000 and unsure.sum() > 50
    assert ent[sure].mean() < 30 < ent[unsure].mean()
    assert margin[sure].mean() > 200 > 100 > margin[unsure].mean()
    if model.endswith(".onnx"):  # the frame sessions never output the full-size logits of run_maps
        assert rt._logits_name not in [o.name for o in rt.session.get_outputs()]
        assert [o.name for o in rt._full().get_outputs()] == ["ids", "confidence"]
    rt.close()


def test_eval_calibration_on_camvid(camvid: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "val.json"
    args = ["eval", "--data", str(camvid / "val"), "--calibration", "--warmup", "0", "--json", str(out)]
    assert main([*args, "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "expected calibration error" in text and "wrong pixels" in text
    c = json.loads(out.read_text())["calibration"]
    assert c["pixels"] == sum(b["pixels"] for b in c["bins"]) > 100_000
    assert c["mean_entropy_wrong"] > 3 * c["mean_entropy_right"]  # the map points at the errors
    filled = [b for b in c["bins"] if b["pixels"] > 1000]
    accs = [b["accuracy"] for b in filled]
    assert len(filled) >= 4 and accs == sorted(accs)  # more confident bins are more often right
    assert 0 <= c["ece"] < 0.1
