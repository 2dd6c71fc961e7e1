"""Overlay: exact palette colours, opacity, legend and stats text placement, size mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.errors import SegstreamError
from engines.meta import ClassTable
from stream.overlay import Overlay, blend, colorize


@pytest.fixture(scope="module")
def classes(camvid: Path) -> ClassTable:
    return ClassTable.from_json_file(camvid / "classes.json")


def test_colorize_gives_each_class_its_palette_colour_in_bgr(classes: ClassTable) -> None:
    ids = np.arange(classes.num_classes + 2, dtype=np.uint8).reshape(1, -1)  # two ids beyond the table
    colours = colorize(ids, classes.lut_bgr())
    assert colours.shape == (1, classes.num_classes + 2, 3)
    for i, (r, g, b) in enumerate(classes.palette):
        assert tuple(colours[0, i]) == (b, g, r)
    assert np.all(colours[0, classes.num_classes :] == 0)  # unknown ids -> black


def test_blend_opacity_ends_and_middle() -> None:
    frame = np.full((4, 4, 3), 200, np.uint8)
    colour = np.full((4, 4, 3), 100, np.uint8)
    assert np.array_equal(blend(frame, colour, 0.0), frame)
    assert np.array_equal(blend(frame, colour, 1.0), colour)
    assert np.all(blend(frame, colour, 0.5) == 150)


def test_render_blends_and_resizes_a_smaller_mask(classes: ClassTable) -> None:
    frame = np.full((60, 80, 3), 255, np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[:, 20:] = 3  # right half: class 3
    out = Overlay(classes, opacity=1.0).render(frame, mask)
    assert out.shape == frame.shape
    r, g, b = classes.palette[3]
    assert tuple(out[30, 70]) == (b, g, r)
    r, g, b = classes.palette[0]
    assert tuple(out[30, 10]) == (b, g, r)


def test_legend_sits_top_right_and_stats_bottom_left(classes: ClassTable) -> None:
    frame = np.full((360, 480, 3), 128, np.uint8)
    mask = np.zeros((360, 480), np.uint8)
    plain = Overlay(classes, opacity=0.4).render(frame, mask)
    with_legend = Overlay(classes, opacity=0.4, legend=True).render(frame, mask)
    changed = np.any(with_legend != plain, axis=2)
    ys, xs = np.nonzero(changed)
    assert len(ys) > 1000
    assert xs.min() > 480 // 2 and ys.min() < 20  # top-right corner only

    stats = Overlay(classes, opacity=0.4, show_stats=True)
    assert np.array_equal(stats.render(frame, mask), plain)  # nothing to show without values
    with_text = stats.render(frame, mask, fps=31.4, latency_ms=18)
    ys, xs = np.nonzero(np.any(with_text != plain, axis=2))
    assert len(ys) > 100 and ys.min() > 360 // 2 and xs.max() < 480 // 2 + 100


def test_legend_fits_a_tiny_frame(classes: ClassTable) -> None:
    out = Overlay(classes, legend=True, show_stats=True).render(
        np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint8), fps=9.0
    )
    assert out.shape == (48, 64, 3)


def test_opacity_out_of_range_is_an_error(classes: ClassTable) -> None:
    with pytest.raises(SegstreamError, match="opacity 1.5"):
        Overlay(classes, opacity=1.5)
