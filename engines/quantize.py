"""FP32 ONNX -> INT8 Q/DQ ONNX, calibrated on real images (ONNX Runtime static quantization).

The settings are the ones TensorRT's ONNX parser accepts (TensorRT-RTX included): QDQ format,
per-channel symmetric weights, symmetric activations, biases left in float. ONNX Runtime runs the same
file on CPU, so the accuracy cost is measured here, against the FP32 model, on a validation split.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from engines.errors import SegstreamError
from engines.export import ExportError, get_meta, load_images, load_onnx, set_meta
from engines.meta import ModelMeta

QDQ_OPTIONS = {"QuantizeBias": False, "ActivationSymmetric": True, "WeightSymmetric": True}


class QuantizeError(SegstreamError):
    """Quantization could not run (bad model, no calibration images, ...)."""


@dataclass
class QuantizeReport:
    path: Path
    calib_images: int
    seconds: float
    size_bytes: int
    fp32_miou: float | None = None
    int8_miou: float | None = None
    val_images: int = 0
    notices: list[str] = field(default_factory=list)


def _reader(frames: list[np.ndarray], meta: ModelMeta):
    from onnxruntime.quantization import CalibrationDataReader

    from engines.runtime.preprocess import prepare_batch

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = (prepare_batch([f], meta) for f in frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {"images": batch}

    return Reader()


def quantize_model(
    onnx_path: str | Path,
    out_path: str | Path,
    calib_dir: str | Path,
    *,
    count: int = 32,
    val_dir: str | Path | None = None,
    val_count: int = 0,
    method: str = "minmax",
) -> QuantizeReport:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    try:
        model = load_onnx(onnx_path)
        meta = get_meta(model, onnx_path)
        if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
            raise QuantizeError(f"{onnx_path} is already quantized")
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
            raise QuantizeError(f"{onnx_path} is an FP16 model; quantize the FP32 export")
        frames = load_images(calib_dir, count)
    except ExportError as e:
        raise QuantizeError(str(e)) from None
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise QuantizeError(f"calibration method '{method}' is not one of {', '.join(methods)}")

    t0 = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    root_log = logging.getLogger()
    level = root_log.level
    with tempfile.TemporaryDirectory(prefix="segstream-quant-") as tmp:
        raw = Path(tmp) / "q.onnx"
        # quantize_static logs a generic "consider pre-processing" advice on the root logger every call
        root_log.setLevel(logging.ERROR)
        try:
            quantize_static(
                onnx_path,
                raw,
                _reader(frames, meta),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                extra_options=dict(QDQ_OPTIONS),
            )
        finally:
            root_log.setLevel(level)
        qmodel = load_onnx(raw)
    quant = {"format": "qdq-int8", "calibration": f"{len(frames)} images from {calib_dir}", "method": method}
    set_meta(qmodel, replace(meta, extra={**meta.extra, "quantization": quant}))
    onnx.save(qmodel, str(out_path))
    rep = QuantizeReport(out_path, len(frames), time.perf_counter() - t0, out_path.stat().st_size)
    if val_dir is not None:
        rep.fp32_miou, rep.val_images = evaluate_miou(onnx_path, val_dir, val_count)
        rep.int8_miou, _ = evaluate_miou(out_path, val_dir, val_count)
    return rep


def evaluate_miou(model_path: str | Path, data_dir: str | Path, count: int = 0) -> tuple[float, int]:
    """(mIoU, images used) of a model file on an images/ + labels/ folder, at the labels' resolution."""
    import cv2

    from engines.metrics import ConfusionMatrix
    from engines.runtime import load

    data_dir = Path(data_dir)
    img_dir, lab_dir = data_dir / "images", data_dir / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise QuantizeError(f"{data_dir}: expected images/ and labels/ folders (CamVid layout)")
    files = sorted(img_dir.glob("*.jpg")) + sorted(img_dir.glob("*.png"))
    if count > 0 and len(files) > count:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, count)]
    if not files:
        raise QuantizeError(f"{img_dir}: no images")
    rt = load(model_path, device="cpu")
    cm = ConfusionMatrix(rt.meta.classes.num_classes, rt.meta.classes.ignore_index)
    for f in files:
        label_path = lab_dir / (f.stem + ".png")
        label = cv2.imread(str(label_path), cv2.IMREAD_GRAYSCALE)
        if label is None:
            raise QuantizeError(f"{label_path}: missing or unreadable label for {f.name}")
        frame = cv2.imread(str(f), cv2.IMREAD_COLOR)
        mask = rt.predict([frame], full_size=True).masks[0]
        cm.update(label, mask)
    return cm.miou(), len(files)
