"""`segstream explain`: saliency concentrates on the explained class, and refusals are one line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.cli import main
from stream.config import ASSETS

DEFAULT_PT = ASSETS / "default.pt"
FRAME = "0016E5_07959"


@pytest.fixture(scope="module")
def frame(camvid: Path) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.imread(str(camvid / "val" / "images" / f"{FRAME}.jpg"), cv2.IMREAD_COLOR)
    lab = cv2.imread(str(camvid / "val" / "labels" / f"{FRAME}.png"), cv2.IMREAD_UNCHANGED)
    assert img is not None and lab is not None
    return img, lab


@pytest.fixture(scope="module")
def bundled():
    from engines.runtime.torch import model_from_checkpoint

    net, meta, _ = model_from_checkpoint(DEFAULT_PT)
    return net, meta


def concentration(heat: np.ndarray, label: np.ndarray, cid: int) -> float:
    """Mean saliency on the class's true pixels over mean saliency on every other labelled pixel."""
    inside = label == cid
    outside = (label != cid) & (label != 11)
    assert inside.sum() > 500 and outside.sum() > 500  # the frame really shows the class
    return float(heat[inside].mean() / max(heat[outside].mean(), 1e-6))


@pytest.mark.parametrize(
    ("method", "name", "cid", "at_least"),
    # measured on this frame: Grad-CAM Sky 30, Car 3.5; IG (4 steps) Sky 6, Car 11
    [("gradcam", "Sky", 0, 5.0), ("gradcam", "Car", 8, 2.0), ("ig", "Sky", 0, 3.0), ("ig", "Car", 8, 4.0)],
)
def test_heatmap_concentrates_on_the_class(frame, bundled, method, name, cid, at_least) -> None:
    from engines.explain import explain

    img, lab = frame
    net, meta = bundled
    ex = explain(net, meta, img, name, method=method, steps=4)
    assert ex.heatmap.shape == lab.shape and ex.heatmap.dtype == np.float32
    assert ex.heatmap.min() >= 0.0 and ex.heatmap.max() <= 1.0 and ex.heatmap.max() > 0.5
    assert ex.class_id == cid and ex.class_pixels > 0
    ratio = concentration(ex.heatmap, lab, cid)
    assert ratio > at_least, f"{method} for {name}: saliency ratio inside/outside {ratio:.2f}"
    # and it is about *this* class: explaining another class moves the heat away from it
    other = explain(net, meta, img, "Building", method=method, steps=4)
    assert concentration(other.heatmap, lab, cid) < ratio


def test_cli_writes_panels(camvid: Path, tmp_path: Path, capsys) -> None:
    image = camvid / "val" / "images" / f"{FRAME}.jpg"
    assert main(["explain", str(image), "--class", "car", "--out", str(tmp_path)]) == 0
    panel = cv2.imread(str(tmp_path / f"{FRAME}_Car_gradcam.png"))
    heat = cv2.imread(str(tmp_path / f"{FRAME}_Car_gradcam_heatmap.png"), cv2.IMREAD_UNCHANGED)
    assert panel is not None and panel.shape == (180, 4 * 240, 3)  # four panels side by side
    assert heat is not None and heat.shape == (180, 240) and heat.dtype == np.uint8 and heat.max() > 128
    assert "layer 'fusion'" in capsys.readouterr().out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_unknown_class_names_the_valid_ones(camvid: Path, tmp_path: Path, capsys) -> None:
    image = camvid / "val" / "images" / f"{FRAME}.jpg"
    assert main(["explain", str(image), "--class", "Giraffe", "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "'Giraffe'" in line and "Sky, Building, Pole, Road" in line and "Bicyclist" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("model", ["default.onnx", "m.engine"])
def test_compiled_models_are_refused_with_the_reason(camvid: Path, tmp_path: Path, capsys, model) -> None:
    image = camvid / "val" / "images" / f"{FRAME}.jpg"
    path = ASSETS / model if model.endswith(".onnx") else tmp_path / model
    assert main(["explain", "--model", str(path), str(image), "--class", "Sky", "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "cannot explain" in line and "no backward pass" in line and ".pt checkpoint" in line


def test_unknown_layer_is_one_line(camvid: Path, tmp_path: Path, capsys) -> None:
    image = camvid / "val" / "images" / f"{FRAME}.jpg"
    args = ["explain", str(image), "--class", "Sky", "--layer", "nope", "--out", str(tmp_path)]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "--layer 'nope'" in line and "fusion" in line
