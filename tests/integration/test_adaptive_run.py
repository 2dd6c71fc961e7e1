"""`segstream run --adaptive` on a live synthetic source paced faster than the model runs at full size."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.mask_helpers import Headers, free_port_block
from tests.procs import run, start
from tests.unit import tiling_models as tm

pytestmark = pytest.mark.timeout(150)


def test_adaptive_steps_down_until_frames_stop_dropping(tmp_path: Path) -> None:
    """HeavyNet costs ≈ 55-95 ms a frame at its native 480x360 here (≤ 18 fps), ≈ 8-13 ms at 176x136;
    the source runs at 30 fps for 12 s. At the full size most frames must drop; the controller steps
    down, and at a smaller size (where it spends most of the run) drops stop; it probes back up with
    headroom."""
    model = tm.heavy_model(tmp_path)
    out = run(
        "run", "synthetic://?size=320x240&fps=30&frames=360",
        "--model", model, "--adaptive", "--threads", "1", "--sink", tmp_path / "o.mp4",
        "--stats-json", tmp_path / "s.json", "--no-progress",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ad = json.loads((tmp_path / "s.json").read_text())["stages"]["preprocess"]["extra"]["adaptive"]
    assert ad["steps_down"] >= 1 and ad["changes"][0]["from"] == [480, 360], ad
    assert "drops" in ad["changes"][0]["reason"]
    per = ad["per_size"]
    native = per["480x360"]
    assert native["drops"] > 0.3 * native["frames"], per
    # the size the run settled at: most frames, and (nearly) no drops there
    settled = max((s for s in per if s != "480x360"), key=lambda s: per[s]["frames"])
    assert per[settled]["frames"] >= 60 and per[settled]["drops"] <= 0.05 * per[settled]["frames"], per
    # with headroom at the settled size it probes the next one up (and comes back if that one drops)
    assert ad["steps_up"] >= 1, ad["changes"]


def test_adaptive_refuses_a_model_exported_for_one_size(tmp_path: Path) -> None:
    """A fixed-H/W graph cannot take the smaller inputs: one line before any stage starts, not a crash
    loop in the infer stage at the first step down."""
    from engines.export import export_onnx

    meta = tm._meta(["red", "green", "blue"], [[255, 0, 0], [0, 255, 0], [0, 0, 255]], "colornet")
    model = tmp_path / "static.onnx"
    export_onnx(tm.ColorNet().eval(), meta, model, static=True, simplify=False)
    args = ("run", "synthetic://?frames=5", "--model", model, "--adaptive", "--no-progress")
    out = run(*args, cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'adaptive' = True" in lines[0] and "64x48 only" in lines[0], out.stderr


def test_adaptive_steps_back_up_when_the_camera_slows_down(tmp_path: Path) -> None:
    """The same camera paced at 30 fps for 4 s, then at 5 fps for 12 s (``pace=120@5``): the size steps
    down while frames drop, and once the pace has fallen, steps back up and ends larger than the smallest
    size it reached. Every published mask header and the live view say the size each mask was inferred at."""
    model = tm.heavy_model(tmp_path)
    pub, view = free_port_block(3), free_port_block(1)
    p = start(
        "run", "synthetic://?size=320x240&fps=30&frames=180&pace=120@5",
        "--model", model, "--adaptive", "--threads", "1", "--sink", tmp_path / "o.mp4",
        "--sink", f"zmq-pub://127.0.0.1:{pub}", "--sink", f"http://127.0.0.1:{view}",
        "--stats-json", tmp_path / "s.json", "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    headers, seen_in_view = Headers(pub), set()
    try:
        while p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{view}/stats.json", timeout=2) as r:
                    size = json.loads(r.read()).get("infer_size")
                    if size:
                        seen_in_view.add(tuple(size))
            except OSError:
                pass  # not up yet, or gone at the end
            time.sleep(0.2)
        _, stderr = p.communicate(timeout=60)
    finally:
        headers.close()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    ad = json.loads((tmp_path / "s.json").read_text())["stages"]["preprocess"]["extra"]["adaptive"]
    changes = ad["changes"]
    downs = [c for c in changes if c["to"][0] < c["from"][0]]
    assert downs, changes
    smallest = min(c["to"][0] for c in downs)
    last_down = max(c["t"] for c in downs)
    ups_after = [c for c in changes if c["to"][0] > c["from"][0] and c["t"] > last_down]
    assert ups_after, changes  # it went back up once frames stopped dropping
    assert ad["size"][0] > smallest, ad  # and stayed larger than the smallest size it needed
    # each mask says the size it was inferred at; over the run: the native size and the smaller ones
    masks = [h for h in headers.parsed if h["kind"] == "segstream.mask"]  # not the end message
    sizes = [tuple(h["infer_size"]) for h in masks]
    assert len(sizes) > 50 and (480, 360) in sizes and min(w for w, _ in sizes) == smallest, set(sizes)
    assert set(sizes) <= {tuple(s) for s in ad["sizes"]}
    assert all(h["width"] == 320 and h["height"] == 240 for h in masks)  # masks at frame size
    assert len(seen_in_view) >= 2, seen_in_view  # the live view followed the changes
