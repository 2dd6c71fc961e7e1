"""engines.build / `segstream build-engine` with the TensorRT flavour installed here (TensorRT-RTX in CI),
and the engine-file checks of engines.runtime.tensorrt that need no GPU."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from engines.build import (
    MAGIC,
    EngineBuildError,
    EngineHeader,
    EngineMismatch,
    Profile,
    build_engine,
    read_engine_header,
    write_engine,
)
from engines.export import export_onnx, load_images
from engines.runtime import BackendUnavailable, ModelFileError, ShapeError, load
from tests.procs import run
from tests.unit.runtime_models import TinyNet, camvid_meta

trt_compat = pytest.importorskip("engines.trt_compat")


def _trt():
    try:
        return trt_compat.load_trt()
    except BackendUnavailable as e:
        pytest.skip(f"no TensorRT flavour installed: {e}")


@pytest.fixture(scope="module")
def onnx_model(camvid: Path, tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engine") / "tiny.onnx"
    export_onnx(TinyNet(), camvid_meta(camvid, "tiny"), path, verify_frames=load_images(camvid / "val", 1))
    return path


def test_builds_fp16_engine_with_dynamic_profile_and_reads_meta_back(
    onnx_model: Path, tmp_path: Path
) -> None:
    trt = _trt()
    out = tmp_path / "tiny.fp16.engine"
    prof = Profile((1, 128, 160), (2, 192, 256), (4, 360, 480))
    rep = build_engine(onnx_model, out, precision="fp16", profile=prof, workspace_mb=256)
    assert out.stat().st_size == rep.size_bytes > 100_000
    header, offset = read_engine_header(out)
    assert header.trt_flavour == trt.flavour and header.trt_version == trt.version
    assert header.precision == "fp16" and header.profile == prof
    assert header.meta.arch == "tiny" and header.meta.classes.num_classes == 11
    assert header.meta.input_size == (256, 192) and header.meta.max_batch == 4
    assert (
        "--precision fp16 --min-shape 1x128x160 --opt-shape 2x192x256 --max-shape 4x360x480"
        in header.build_command
    )
    assert out.read_bytes()[:8] == MAGIC and offset < rep.size_bytes
    if trt.strongly_typed:
        assert any("converted the model to FP16" in n for n in rep.notices)


def test_cli_build_engine_and_timing_cache(onnx_model: Path, tmp_path: Path) -> None:
    trt = _trt()
    out = tmp_path / "cli.engine"
    cache = tmp_path / "trt.timing.cache"
    cmd = [
        "build-engine",
        str(onnx_model),
        "-o",
        str(out),
        "--precision",
        "fp32",
        "--min-shape",
        "1x96x128",
        "--max-shape",
        "2x192x256",
        "--timing-cache",
        str(cache),
    ]
    r = run(*cmd, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "built by" in r.stdout and "[TRT]" not in r.stdout + r.stderr  # no bare TensorRT log lines
    assert read_engine_header(out)[0].profile.max == (2, 192, 256)
    if trt.has_timing_cache:  # full TensorRT: the cache is written, then reused by the next build
        assert cache.stat().st_size > 0
        r2 = run(*cmd, timeout=300)
        assert "reused timing cache" in r2.stdout
    else:
        assert "no timing cache" in r.stdout


def test_build_errors_are_one_line(onnx_model: Path, tmp_path: Path) -> None:
    _trt()
    with pytest.raises(EngineBuildError, match="no Q/DQ nodes"):
        build_engine(onnx_model, tmp_path / "x.engine", precision="int8")
    with pytest.raises(EngineBuildError, match="min <= opt <= max"):
        Profile((1, 200, 200), (1, 100, 100), (1, 300, 300))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    r = run("build-engine", junk, timeout=120)
    assert r.returncode == 2 and "junk.onnx: not a readable ONNX model" in r.stderr
    assert "Traceback" not in r.stderr


def _fake_engine(path: Path, meta, flavour: str, version: str, gpu=None) -> Path:
    header = EngineHeader(
        meta=meta,
        trt_flavour=flavour,
        trt_version=version,
        precision="fp16",
        profile=Profile((1, 64, 64), (1, 192, 256), (2, 192, 256)),
        gpu=gpu,
        build_command="segstream build-engine m.onnx -o m.engine --precision fp16",
    )
    write_engine(path, header, b"\x00" * 64)
    return path


def test_engine_from_another_tensorrt_version_is_refused_with_rebuild_command(
    camvid: Path, tmp_path: Path
) -> None:
    trt = _trt()
    eng = _fake_engine(tmp_path / "old.engine", camvid_meta(camvid, "tiny"), trt.flavour, "9.0.0")
    with pytest.raises(
        EngineMismatch,
        match=r"built by .* 9\.0\.0 but this machine has .*"
        r"Rebuild here: segstream build-engine m\.onnx -o m\.engine",
    ):
        load(eng)
    other = "tensorrt" if trt.flavour == "tensorrt_rtx" else "tensorrt_rtx"
    with pytest.raises(EngineMismatch, match=f"built by {other} {trt.version}"):
        load(_fake_engine(tmp_path / "other.engine", camvid_meta(camvid, "tiny"), other, trt.version))


def test_garbage_and_truncated_engine_files(camvid: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"\x7fELF" + b"\x00" * 100)
    with pytest.raises(ModelFileError, match="junk.engine: not a segstream engine"):
        load(junk)
    bad_json = tmp_path / "badjson.plan"
    bad_json.write_bytes(MAGIC + struct.pack("<Q", 5) + b"{oops" + b"plan")
    with pytest.raises(ModelFileError, match="badjson.plan: engine header is corrupt"):
        load(bad_json)
    trunc = tmp_path / "trunc.engine"
    trunc.write_bytes(MAGIC + struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(ModelFileError, match="truncated"):
        load(trunc)
    no_plan = tmp_path / "noplan.engine"
    blob = json.dumps({"x": 1}).encode()
    no_plan.write_bytes(MAGIC + struct.pack("<Q", len(blob)) + blob)
    with pytest.raises(ModelFileError):
        load(no_plan)


def test_engine_without_gpu_is_backend_unavailable(camvid: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU; the no-GPU error cannot happen here")
    trt = _trt()
    eng = _fake_engine(tmp_path / "ok.engine", camvid_meta(camvid, "tiny"), trt.flavour, trt.version)
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        load(eng)
    with pytest.raises(BackendUnavailable, match="GPU only"):
        load(eng, device="cpu")


def test_profile_bounds_are_shape_errors() -> None:
    from engines.build import check_in_profile

    prof = Profile((1, 128, 160), (1, 192, 256), (4, 360, 480))
    check_in_profile((4, 360, 480), prof, Path("m.engine"))
    with pytest.raises(
        ShapeError, match=r"8x360x480 .* outside m\.engine's optimization profile .*max 4x360x480"
    ):
        check_in_profile((8, 360, 480), prof, Path("m.engine"))
    with pytest.raises(ShapeError, match="outside"):
        check_in_profile((1, 720, 1280), prof, Path("m.engine"))


def test_engine_for_another_gpu_is_refused(camvid: Path, tmp_path: Path) -> None:
    from engines.build import check_compatible

    meta = camvid_meta(camvid, "tiny")
    eng = tmp_path / "m.engine"
    _fake_engine(
        eng, meta, "tensorrt", "10.3.0", gpu={"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    )
    header, _ = read_engine_header(eng)
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    with pytest.raises(
        EngineMismatch, match=r"built for NVIDIA GeForce RTX 4090 .*8\.9.* this GPU is NVIDIA H100"
    ):
        check_compatible(header, "tensorrt", "10.3.0", h100, eng)
    check_compatible(header, "tensorrt", "10.3.0", {"name": "RTX 4090 D", "compute_capability": "8.9"}, eng)
    rtx = _fake_engine(tmp_path / "rtx.engine", meta, "tensorrt_rtx", "1.7.1.116")
    with pytest.raises(EngineMismatch, match="runs only on RTX-class GPUs"):
        check_compatible(read_engine_header(rtx)[0], "tensorrt_rtx", "1.7.1.116", h100, rtx)


def test_fixed_hw_model_rejects_a_resolution_range(camvid: Path, tmp_path: Path) -> None:
    import torch

    _trt()
    torch.manual_seed(0)
    path = tmp_path / "static.onnx"
    export_onnx(TinyNet(), camvid_meta(camvid, "tiny"), path, static=True)
    with pytest.raises(EngineBuildError, match="fixed H of 192"):
        build_engine(path, tmp_path / "s.engine", profile=Profile((1, 96, 256), (1, 192, 256), (2, 192, 256)))
    rep = build_engine(
        path, tmp_path / "s.engine", precision="fp32"
    )  # default profile: batch 1..4 at 256x192
    assert rep.header.profile.max == (4, 192, 256)
