"""Network exposure is said on the user's terminal before any stage starts, and an unprotected bind
beyond loopback needs --insecure: the real CLI, real processes."""

from __future__ import annotations

import time

import pytest

from stream.exposure import ExposureError, check_exposure, is_loopback

from .mask_helpers import free_port_block, segstream

SOURCE = "synthetic://?size=160x120&fps=25&frames=5&live=0"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sink", "zmq-pub://0.0.0.0:{p}"], "unencrypted to the network"),
        (["--sink", "zmq-pub://*:{p}?lossless=on"], "unencrypted to the network"),
        (["--sink", "http://0.0.0.0:{p}"], "live view to the network"),
        (
            ["--workers", "0", "--remote-infer", "tcp://*:{p}", "tcp://127.0.0.1:{q}"],
            "--remote-infer tcp://*:",
        ),
    ],
)
def test_unprotected_network_bind_is_refused_before_any_stage(extra, needle, onnx_model):
    p = free_port_block()
    args = [a.format(p=p, q=p + 1) for a in extra]
    t0 = time.monotonic()
    proc = segstream("run", SOURCE, "--model", str(onnx_model), "--no-progress", "--sink", "none.mp4", *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "--insecure" in lines[0], err
    assert "Traceback" not in err and "stage" not in err
    assert time.monotonic() - t0 < 60


def test_insecure_run_warns_on_the_terminal_first(tmp_path, onnx_model):
    p, v = free_port_block(), free_port_block(1)
    proc = segstream(
        "run", SOURCE, "--model", str(onnx_model), "--no-progress", "--insecure",
        "--sink", str(tmp_path / "out.mp4"),
        "--sink", f"zmq-pub://0.0.0.0:{p}", "--sink", f"http://127.0.0.1:{v}",
    )  # fmt: skip
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    warning = next(i for i, ln in enumerate(lines) if "WARNING: mask stream" in ln)
    assert f"tcp ports {p}, {p + 1}" in lines[warning] and "all interfaces" in lines[warning]
    assert any(f"live view at http://127.0.0.1:{v}/" in ln for ln in lines)
    assert "5 frames" in out


def test_loopback_and_curve_need_no_consent(tmp_path):
    from stream.keys import generate

    generate(tmp_path / "server", "server")
    generate(tmp_path / "allow", "client")
    assert (
        check_exposure(["zmq-pub://127.0.0.1:5555", "out.mp4"], ["tcp://127.0.0.1:1", "tcp://[::1]:2"]) == []
    )
    secret = tmp_path / "server" / "server.key_secret"
    lines = check_exposure([f"zmq-pub://0.0.0.0:5555?curve_secret={secret}&allow={tmp_path / 'allow'}"], [])
    assert len(lines) == 1 and "CURVE on" in lines[0]
    with pytest.raises(ExposureError):
        check_exposure(["zmq-pub://192.0.2.7:5555"], [])  # a LAN address is the network too
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("*") and not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
