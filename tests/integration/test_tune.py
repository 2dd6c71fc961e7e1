"""`segstream tune` end to end: real pipeline runs, a real labelled folder, a written config that is run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.config import load_run_config
from tests.procs import run

pytestmark = pytest.mark.timeout(240)


def test_tune_writes_a_config_that_meets_its_target_when_run(avi_clip, camvid: Path, tmp_path: Path) -> None:
    """A loose target and a tiny budget: tune measures what fits (at least one candidate through the
    real pipeline), pairs it with mIoU on the fixture's val folder, writes best.toml; `segstream run
    --config best.toml` on the same source then reaches the target."""
    target = 3.0
    out = run(
        "tune", "--target-fps", str(target), "--source", str(avi_clip.path), "--data", str(camvid / "val"),
        "--budget", "0.2", "--frames", "20", "--limit", "3", "--sizes", "240x176,320x240,400x296,480x360",
        "--precisions", "fp32", "--backends", "onnxruntime", "--threads", "1x1,1x2", "--out", "tuned",
        cwd=tmp_path, timeout=200,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Pareto" in out.stdout and "<- chosen" in out.stdout
    rep = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    measured = [r for r in rep["results"] if r["fps"] is not None]
    assert 1 <= rep["measured"] < rep["candidates"], "a 12 s budget cannot measure every candidate"
    assert "left unmeasured" in out.stderr
    for r in measured:
        assert r["frames"] == 20 and 0.0 < r["miou"] <= 1.0
    assert (tmp_path / "tuned" / "pareto.png").stat().st_size > 10_000

    best = tmp_path / "tuned" / "best.toml"
    cfg = load_run_config(best)
    chosen = next(r for r in measured if r["candidate"]["label"] == rep["chosen"])
    assert chosen["fps"] >= target and chosen["confirmed_fps"] >= target and Path(cfg["model"]).is_file()
    assert cfg["threads"] == chosen["candidate"]["threads"] and cfg["infer_mode"] == "scaled"

    again = run(
        "run", str(avi_clip.path), "--config", str(best), "--max-frames", "60",
        "--stats-json", "stats.json", "--no-progress", cwd=tmp_path, timeout=200,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames"] == 60 and stats["fps"] >= target, stats["fps"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--target-fps", "0"], "--target-fps 0: must be a positive number"),
        (["--target-fps", "5", "--precisions", "int8"], "--precisions int8 needs --data"),
        (["--target-fps", "5", "--source", "missing.mp4"], "missing.mp4"),
        (["--target-fps", "5", "--sizes", "480by360"], "size '480by360': expected WxH"),
        (["--target-fps", "5", "--backends", "tensorflow"], "--backends 'tensorflow'"),
    ],
)
def test_tune_refuses_bad_options_in_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    out = run("tune", *args, "--out", "t", cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
