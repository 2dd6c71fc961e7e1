"""engines.quantize / `segstream quantize`: INT8 Q/DQ from real CamVid images, run in ONNX Runtime,
compiled by the installed TensorRT flavour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.export import export_checkpoint, get_meta, load_images
from engines.quantize import QuantizeError, quantize_model
from engines.runtime import BackendUnavailable, load
from tests.procs import run
from tests.unit.runtime_models import trained_fastscnn


@pytest.fixture(scope="module")
def fp32_model(camvid: Path, tmp_path_factory) -> Path:
    ckpt = trained_fastscnn(camvid, tmp_path_factory.getbasetemp() / "segstream-models")
    path = ckpt.with_suffix(".onnx")
    if not path.is_file():
        export_checkpoint(ckpt, path, verify_dir=camvid / "val", verify_count=2)
    return path


@pytest.fixture(scope="module")
def int8_model(fp32_model: Path, camvid: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quant") / "fastscnn.int8.onnx"
    rep = quantize_model(fp32_model, out, camvid / "train", count=6)
    assert rep.calib_images == 6 and rep.size_bytes < 0.5 * fp32_model.stat().st_size
    return out


def test_int8_qdq_model_runs_in_onnxruntime_close_to_fp32(
    int8_model: Path, fp32_model: Path, camvid: Path
) -> None:
    model = onnx.load(str(int8_model))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # biases stay float (TensorRT's parser rejects int32 bias DequantizeLinear)
    assert not any(
        t.data_type == onnx.TensorProto.INT32 and "bias" in t.name for t in model.graph.initializer
    )
    meta = get_meta(model)
    assert meta.extra["quantization"]["format"] == "qdq-int8"
    assert meta.classes == get_meta(onnx.load(str(fp32_model))).classes

    frames = load_images(camvid / "val", 4)
    q = load(int8_model, device="cpu").predict(frames, confidence=True)
    f = load(fp32_model, device="cpu").predict(frames)
    agreement = float(np.mean(np.stack(q.masks) == np.stack(f.masks)))
    assert agreement >= 0.9, agreement  # INT8 moves boundaries a little, not the picture
    assert q.confidence[0].dtype == np.uint8


def test_int8_model_builds_into_an_engine(int8_model: Path, tmp_path: Path) -> None:
    from engines.build import build_engine, read_engine_header
    from engines.trt_compat import load_trt

    try:
        load_trt()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    rep = build_engine(int8_model, tmp_path / "q.engine", precision="int8")
    header, _ = read_engine_header(tmp_path / "q.engine")
    assert header.precision == "int8" and rep.size_bytes > 100_000
    assert header.meta.extra["quantization"]["format"] == "qdq-int8"


def test_cli_reports_miou_cost(fp32_model: Path, camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    r = run(
        "quantize", fp32_model, "--calib", camvid / "train", "--count", "4", "-o", out,
        "--val", camvid / "val", "--val-count", "4",
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "INT8 Q/DQ, calibrated on 4 images" in r.stdout
    assert "mIoU on 4 val images: FP32 0." in r.stdout and "cost" in r.stdout
    assert "consider" not in r.stderr  # ORT's pre-processing advice is not shown to users


def test_quantize_errors(int8_model: Path, fp32_model: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_model(int8_model, tmp_path / "x.onnx", tmp_path)
    with pytest.raises(QuantizeError, match="image folder not found"):
        quantize_model(fp32_model, tmp_path / "x.onnx", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizeError, match="no images"):
        quantize_model(fp32_model, tmp_path / "x.onnx", tmp_path / "empty")
