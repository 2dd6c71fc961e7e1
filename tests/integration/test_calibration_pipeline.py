"""Uncertainty maps through the real pipeline: `segstream run` with an images sink asking for entropy and
margin, and the overlay mode that shades unsure pixels (real processes, shared memory, real files)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.procs import run

pytestmark = pytest.mark.timeout(150)


def test_entropy_margin_sink_and_shaded_overlay(sample_clip, tmp_path: Path) -> None:
    """The bundled (trained) model: a random-weight one is uniformly unsure, which would test nothing."""
    from stream.config import DEFAULT_MODEL

    out = tmp_path / "frames"
    what = "overlay,frame,mask,confidence,entropy,margin"
    r = run(
        "run", str(sample_clip.path), "--max-frames", "3",
        "--sink", f"images:{out}?what={what}", "--shade-uncertain", "0.5", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for kind in what.split(","):
        assert sorted(p.name for p in (out / kind).iterdir()) == ["000000.png", "000001.png", "000002.png"]
    from engines.meta import ModelMeta
    from engines.runtime import load
    from stream.overlay import Overlay

    with load(DEFAULT_MODEL, device="cpu") as rt:
        meta: ModelMeta = rt.meta
    read = lambda kind: cv2.imread(str(out / kind / "000001.png"), cv2.IMREAD_UNCHANGED)  # noqa: E731
    frame, mask, conf, ent, margin, shaded = (
        read(k) for k in ("frame", "mask", "confidence", "entropy", "margin", "overlay")
    )
    for m in (conf, ent, margin):
        assert m.shape == (sample_clip.height, sample_clip.width) and m.dtype == np.uint8
    # the maps vary over the frame and agree in direction with the confidence
    assert ent.std() > 2 and margin.std() > 2
    low, high = conf < 128, conf >= 250
    assert low.sum() > 1000 and high.sum() > 1000
    assert ent[low].mean() > ent[high].mean() and margin[low].mean() < margin[high].mean()
    # the overlay is the plain blend where the model is sure, darker (and hatched) where it is not
    plain = Overlay(meta.classes, opacity=0.5).render(frame, mask).astype(int)
    unsure = conf < 127  # one grey level inside the 0.5 threshold (maps are resized linearly)
    sure = conf > 128
    assert unsure.sum() > 1000 and sure.sum() > 1000, (unsure.sum(), sure.sum())
    assert np.abs(shaded[sure].astype(int) - plain[sure]).max() <= 1
    assert shaded[unsure].astype(int).sum() < 0.6 * plain[unsure].sum()


def test_maps_are_only_for_sinks_that_ask(sample_clip, onnx_model: Path, tmp_path: Path) -> None:
    """An images sink without maps writes none, and an unknown map name is refused in one line."""
    r = run(
        "run", str(sample_clip.path), "--model", str(onnx_model), "--max-frames", "1",
        "--sink", f"images:{tmp_path / 'f'}?what=overlay,variance", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "variance" in r.stderr and "entropy, margin" in r.stderr
