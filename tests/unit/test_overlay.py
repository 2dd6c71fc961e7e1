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


def _boxes(match: np.ndarray) -> tuple[int, int, int, int, int]:
    """(x0, x1, y0, y1, pixel count) of the True pixels."""
    ys, xs = np.nonzero(match)
    assert len(xs), "no pixel matched"
    return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max()), len(xs)


def test_legend_swatches_carry_the_palette_top_right(classes: ClassTable) -> None:
    frame = np.full((360, 480, 3), 128, np.uint8)
    mask = np.zeros((360, 480), np.uint8)
    plain = Overlay(classes, opacity=0.4).render(frame, mask)
    out = Overlay(classes, opacity=0.4, legend=True).render(frame, mask)
    x0, x1, y0, y1, _ = _boxes(np.any(out != plain, axis=2))
    assert x0 > 480 // 2 and y0 < 20 and x1 < 480 and y1 < 360 * 0.9  # top-right corner only
    legend = np.zeros(out.shape[:2], bool)
    legend[y0 : y1 + 1, x0 : x1 + 1] = True
    assert np.array_equal(out[~legend], plain[~legend])  # nothing else touched

    # The panel is laid over the picture at 75%: a swatch of class c reads 0.25 * picture + 0.75 * colour
    # (BGR). Every class but grey Sky has a colour no text pixel can have: find each one's solid square.
    def expected(c: int) -> np.ndarray:
        r, g, b = classes.palette[c]
        return np.round(0.25 * plain[0, 0] + 0.75 * np.array([b, g, r], float))

    boxes = {}
    for c in range(1, classes.num_classes):
        hit = np.all(np.abs(out.astype(float) - expected(c)) <= 1, axis=2) & legend
        bx0, bx1, by0, by1, n = _boxes(hit)
        side = bx1 - bx0 + 1
        assert side >= 8 and by1 - by0 + 1 == side and n == side * side, (classes.names[c], bx0, by0, n)
        boxes[c] = (bx0, bx1, by0)
    # one column, in class order, evenly spaced; Sky's square is one step above Building's
    assert len({(b[0], b[1]) for b in boxes.values()}) == 1
    step = boxes[2][2] - boxes[1][2]
    assert step > side and all(
        boxes[c + 1][2] - boxes[c][2] == step for c in range(1, classes.num_classes - 1)
    )
    sx0, sx1, sy0 = boxes[1][0], boxes[1][1], boxes[1][2] - step
    sky = out[sy0 : sy0 + side, sx0 : sx1 + 1].astype(float)
    assert np.all(np.abs(sky - expected(0)) <= 1)
    # each name is written right of its swatch: light text pixels on that row
    for c in range(classes.num_classes):
        y = sy0 + c * step
        row = out[y : y + side, sx1 + 2 : x1 + 1]
        assert np.count_nonzero(np.all(row > 150, axis=2)) > 10, classes.names[c]


def test_stats_line_sits_bottom_left_and_shows_the_values(classes: ClassTable) -> None:
    frame = np.full((360, 480, 3), 128, np.uint8)
    mask = np.zeros((360, 480), np.uint8)
    plain = Overlay(classes, opacity=0.4).render(frame, mask)
    stats = Overlay(classes, opacity=0.4, show_stats=True)
    assert np.array_equal(stats.render(frame, mask), plain)  # nothing to show without values
    out = stats.render(frame, mask, fps=31.4, latency_ms=18)
    x0, x1, y0, y1, n = _boxes(np.any(out != plain, axis=2))
    assert n > 100 and y0 > 360 // 2 and x0 < 10 and x1 < 480 // 2 + 100 and y1 < 360
    # white text on a black box
    box = out[y0 : y1 + 1, x0 : x1 + 1]
    assert np.all(box == box[..., :1])  # grey levels only
    assert np.mean(np.all(box == 0, axis=2)) > 0.5
    assert np.count_nonzero(np.all(box == 255, axis=2)) > 30
    # the text follows the values: other numbers, other pixels; latency alone still draws
    other = stats.render(frame, mask, fps=99.9, latency_ms=18)
    assert not np.array_equal(other[y0 : y1 + 1, x0 : x1 + 1], box)
    assert not np.array_equal(stats.render(frame, mask, latency_ms=18), plain)


def test_legend_and_stats_fit_a_tiny_frame(classes: ClassTable) -> None:
    frame, mask = np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint8)
    plain = Overlay(classes).render(frame, mask)
    out = Overlay(classes, legend=True, show_stats=True).render(frame, mask, fps=9.0)
    assert out.shape == (48, 64, 3)
    # the stats box (pure black; the picture is grey 64 here) along the bottom-left
    bx0, _, by0, by1, n = _boxes(np.all(out == 0, axis=2))
    assert n > 100 and bx0 < 8 and by0 > 48 // 3 and by1 >= 48 - 10
    # the legend, scaled down to at most half the width, in the top-right: coloured swatch pixels there
    # and nowhere else above the stats box
    colour = np.any(out != out[..., :1], axis=2)
    colour[by0:] = False
    cx0, cx1, cy0, _, n = _boxes(colour)
    assert n > 20 and cx0 >= 64 - 64 // 2 - 8 and cy0 < 12
    assert not np.array_equal(out[:by0], plain[:by0])


def test_opacity_out_of_range_is_an_error(classes: ClassTable) -> None:
    with pytest.raises(SegstreamError, match="opacity 1.5"):
        Overlay(classes, opacity=1.5)
