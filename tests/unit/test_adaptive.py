"""stream.adaptive: the size controller on a simulated clock (30 frames/s, drops given per frame)."""

from __future__ import annotations

import pytest

from stream.adaptive import AdaptiveSize, ladder

SIZES = ladder((480, 360))
DT = 1 / 30


def feed(ctl: AdaptiveSize, seconds: float, drops_per_s: float, t0: float, total: int) -> tuple[float, int]:
    """Frames for ``seconds`` with ``drops_per_s`` new drops a second; returns (time, drops) after."""
    t, carry = t0, 0.0
    for _ in range(round(seconds / DT)):
        t += DT
        carry += drops_per_s * DT
        total += int(carry)
        carry -= int(carry)
        ctl.update(total, t)
    return t, total


def test_ladder_steps_down_from_the_native_size() -> None:
    assert SIZES[0] == (480, 360) and len(SIZES) == 4
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(SIZES, SIZES[1:], strict=False))
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in SIZES)


def test_steps_down_under_drops_and_back_up_with_headroom() -> None:
    ctl = AdaptiveSize(SIZES)
    t, n = feed(ctl, 2.0, 10, 0.0, 0)  # 10 drops/s: one step per settle period
    assert ctl.level >= 1
    assert ctl.changes[0]["from"] == [480, 360] and "drops" in ctl.changes[0]["reason"]
    down = ctl.level
    t, n = feed(ctl, 2.9, 0, t, n)  # calm, but not yet calm_s since the last change
    assert ctl.level == down
    t, n = feed(ctl, 10.0, 0, t, n)  # headroom: one step up per calm_s
    assert ctl.level == 0 and ctl.stats()["steps_up"] == down


def test_failed_probe_doubles_the_calm_needed_so_the_size_does_not_flap() -> None:
    """The full size never fits (drops whenever it is used); a smaller one always does."""
    ctl = AdaptiveSize(SIZES[:2])
    t, n = 0.0, 0
    ups = []
    for _ in range(600):  # 20 s of frames
        t += DT
        if ctl.level == 0:
            n += 1  # a drop every frame at the full size
        before = ctl.level
        ctl.update(n, t)
        if before == 1 and ctl.level == 0:
            ups.append(t)
    gaps = [b - a for a, b in zip(ups, ups[1:], strict=False)]
    assert len(ups) >= 2 and all(b > a * 1.5 for a, b in zip(gaps, gaps[1:], strict=False)) and gaps[0] > 3
    # without the doubling it would probe every calm_s + settle_s: at least 5 probes in 20 s
    assert len(ups) <= 3
    frames = ctl.stats()["per_size"]
    assert frames["480x360"]["drops"] > 0 and frames["360x272"]["drops"] == 0


def test_no_drops_no_change() -> None:
    ctl = AdaptiveSize(SIZES)
    feed(ctl, 20.0, 0, 0.0, 0)
    assert ctl.level == 0 and ctl.changes == []


@pytest.mark.parametrize("kw", [{"adaptive": True, "infer_mode": "tiled"}, {"adaptive": True, "batch": 4}])
def test_adaptive_config_conflicts_name_the_key(kw: dict) -> None:
    from stream.config import ConfigError, PipelineConfig

    with pytest.raises(ConfigError, match="config key '(adaptive|batch)'"):
        PipelineConfig(**kw)
