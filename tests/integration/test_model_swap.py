"""Swapping the model of a running pipeline (issue 17 item 4): a real file run, real processes and sockets.

A lossless file run is swapped mid-run from one tiny real ONNX model to another with clearly different
output; a corrupt model file is refused first and changes nothing. Every frame is written exactly once,
the masks before the reply's switch seq are the first model's and from it on the second's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.integration.test_streams import env, segstream
from tests.unit.tiling_models import ColorNet, _meta, color_model, export

pytestmark = pytest.mark.timeout(180)


def rotated_model(root: Path) -> Path:
    """ColorNet with its classes rotated: same class table, a different class for every pure pixel."""
    net = ColorNet()
    with torch.no_grad():
        net.conv.weight.copy_(net.conv.weight[[1, 2, 0]])
    meta = _meta(["red", "green", "blue"], [[255, 0, 0], [0, 255, 0], [0, 0, 255]], "colornet-rot")
    return export(net, meta, root / "colornet-rot.onnx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream", "streams", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def offline(model: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    from engines.runtime import load
    from engines.runtime.preprocess import resize_to

    rt = load(str(model), device="cpu", threads=1)
    try:
        return [resize_to(rt.run(rt.prepare([f]))[0][0], f.shape[:2], nearest=True) for f in frames]
    finally:
        rt.close()


def test_file_run_swapped_mid_run(tmp_path, avi_clip):
    a, b = color_model(tmp_path), rotated_model(tmp_path)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07" + b"not a model" * 50)
    url = f"tcp://127.0.0.1:{free_port()}"
    p = segstream(
        ["run", str(avi_clip.path), "--model", str(a), "--threads", "1", "--no-progress"]
        + ["--sink", "images:out?what=mask", "--control", url, "--stats-json", "stats.json"],
        tmp_path,
    )
    try:
        masks = tmp_path / "out" / "mask"
        end = time.monotonic() + 90
        while time.monotonic() < end and len(list(masks.glob("*.png"))) < 40:
            assert p.poll() is None, p.communicate()[1]
            time.sleep(0.1)
        bad = ctl("model", str(corrupt), "--control", url)
        assert bad.returncode != 0
        assert "corrupt.onnx" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "Traceback" not in bad.stderr
        ok = ctl("model", str(b), "--control", url, "--json")
        assert ok.returncode == 0, ok.stderr
        reply = json.loads(ok.stdout)
        out, err = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    seq = reply["seq"]
    assert 40 <= seq < avi_clip.frames, reply
    # every frame written exactly once
    names = sorted(masks.glob("*.png"))
    assert [int(n.stem) for n in names] == list(range(avi_clip.frames))
    cap = cv2.VideoCapture(str(avi_clip.path))
    frames = []
    while True:
        ok_, f = cap.read()
        if not ok_:
            break
        frames.append(f)
    assert len(frames) == avi_clip.frames
    # frames around the switch, and a spread on both sides (offline inference of all 663 costs seconds)
    idx = sorted({*range(max(0, seq - 5), min(len(frames), seq + 5)), 0, seq // 2, len(frames) - 1})
    pa, pb = offline(a, [frames[i] for i in idx]), offline(b, [frames[i] for i in idx])
    for i, ma, mb in zip(idx, pa, pb, strict=True):
        got = cv2.imread(str(masks / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        agree_a, agree_b = float((got == ma).mean()), float((got == mb).mean())
        want, other = (agree_a, agree_b) if i < seq else (agree_b, agree_a)
        assert want > 0.98 and other < 0.5, (i, seq, agree_a, agree_b)
    stats = json.loads((tmp_path / "stats.json").read_text())
    (swap,) = stats["swaps"]
    assert swap["seq"] == seq and swap["model"] == str(b) and swap["gap_ms"] is not None
