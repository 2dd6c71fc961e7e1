"""engines.tune: Pareto marking, the choice for a target, candidate order, size variants, written configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines import tune
from stream.config import DEFAULT_MODEL, PipelineConfig, load_run_config


def cand(size=(480, 360), precision="fp32", threads=1, mode="scaled", scale=1.0) -> tune.Candidate:
    return tune.Candidate(str(DEFAULT_MODEL), "onnxruntime", size, precision, 1, threads, 1, mode, scale)


def result(fps, miou, **kw) -> tune.Result:
    return tune.Result(cand(**kw), fps=fps, miou=miou, latency_p50_ms=10.0)


def test_pareto_marks_exactly_the_undominated() -> None:
    rs = [result(50, 0.70), result(30, 0.75), result(40, 0.60), result(20, 0.75), result(10, 0.80)]
    tune.mark_pareto(rs)
    # (40, .60) is beaten by (50, .70); (20, .75) by (30, .75)
    assert [r.pareto for r in rs] == [True, True, False, False, True]


def test_pick_is_the_most_accurate_that_meets_the_target() -> None:
    rs = [result(50, 0.70), result(30, 0.75, threads=2), result(10, 0.80)]
    assert tune.pick(rs, 25).fps == 30
    assert tune.pick(rs, 5).miou == 0.80
    assert tune.pick(rs, 60) is None
    failed = tune.Result(cand(threads=3), fps=None, error="crashed")
    assert tune.pick([failed], 1) is None
    # a second run of the choice that falls below the target takes it out: the next one is chosen
    rs[1].confirmed_fps = 20.0
    assert tune.pick(rs, 25).fps == 50


def test_candidates_come_likeliest_first_and_tiled_only_for_large_sources() -> None:
    grid = tune.Grid(
        [DEFAULT_MODEL], [(480, 360), (320, 240)], ["fp32", "int8"], ["onnxruntime"], [1], [(1, 1)]
    )
    cs = tune.candidates(grid)
    assert [c.precision for c in cs] == ["fp32", "fp32", "int8", "int8"]
    assert all(c.infer_mode == "scaled" for c in cs)
    grid.tiled = True
    tiled = [c for c in tune.candidates(grid) if c.infer_mode == "tiled"]
    assert len(tiled) == 4 and {c.infer_scale for c in tiled} == {0.5, 1.0}


def test_size_variant_is_the_same_graph_at_another_input_size(tmp_path: Path) -> None:
    from engines.runtime import load

    path = tune.sized_variant(DEFAULT_MODEL, (320, 240), tmp_path)
    assert path != DEFAULT_MODEL and tune.sized_variant(DEFAULT_MODEL, (480, 360), tmp_path) == DEFAULT_MODEL
    rt = load(path, device="cpu", threads=1)
    import numpy as np

    ids, _ = rt.run(rt.prepare([np.zeros((360, 480, 3), np.uint8)]))
    assert rt.meta.input_size == (320, 240) and ids.shape == (1, 240, 320)


def test_written_config_loads_into_a_valid_run_config(tmp_path: Path) -> None:
    c = cand(mode="tiled", scale=0.5, threads=2)
    path = tune.write_config(tmp_path / "best.toml", c, ["measured 12.0 fps"])
    d = load_run_config(path)
    assert d == {**c.run_config()} and path.read_text().startswith("# measured 12.0 fps\n")
    cfg = PipelineConfig.from_dict(d)
    assert (cfg.infer_mode, cfg.infer_scale, cfg.threads) == ("tiled", 0.5, 2)


@pytest.mark.parametrize(
    "text,name,needle",
    [
        ("threads = 0\n", "a.toml", "config key 'threads' = 0: must be a positive integer"),
        ('infer_mode = "mosaic"\n', "a.toml", "config key 'infer_mode' = 'mosaic'"),
        ("threads = \n", "a.toml", "not valid TOML"),
        ('{"slots": 1}', "a.json", "config key 'slots' = 1"),
    ],
)
def test_run_config_errors_name_key_and_value(text: str, name: str, needle: str, tmp_path: Path) -> None:
    from stream.config import ConfigError

    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict(load_run_config(tmp_path / name))
    assert needle in str(e.value)
