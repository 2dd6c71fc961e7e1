"""One inference interface, one module per backend.

``load(path)`` picks the backend from the file: ``.engine``/``.plan`` -> TensorRT, ``.onnx`` ->
ONNX Runtime, ``.pt`` -> PyTorch; a ``triton://HOST:PORT/MODEL`` URI -> a model served by Triton.
"""

from __future__ import annotations

from pathlib import Path

from engines.runtime.base import (
    BackendUnavailable,
    ModelFileError,
    Prediction,
    Runtime,
    RuntimeError_,
    ShapeError,
)

__all__ = [
    "BackendUnavailable",
    "ModelFileError",
    "Prediction",
    "Runtime",
    "RuntimeError_",
    "ShapeError",
    "load",
    "backend_for",
]

_BY_SUFFIX = {".engine": "tensorrt", ".plan": "tensorrt", ".onnx": "onnxruntime", ".pt": "torch"}


def backend_for(path: str | Path) -> str:
    if str(path).startswith("triton://"):
        return "triton"
    suffix = Path(path).suffix.lower()
    try:
        return _BY_SUFFIX[suffix]
    except KeyError:
        raise ModelFileError(
            f"{path}: unknown model file type '{suffix}' (expected .onnx, .engine/.plan or .pt)"
        ) from None


def load(path: str | Path, device: str = "auto", threads: int | None = None, **options) -> Runtime:
    """Load a model file on the backend its suffix names. Errors are ModelFileError/BackendUnavailable."""
    if backend_for(path) == "triton":
        from engines.runtime.triton import TritonRuntime

        return TritonRuntime(str(path), device=device, threads=threads, **options)
    path = Path(path)
    backend = backend_for(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if backend == "onnxruntime":
        from engines.runtime.onnxruntime import OrtRuntime

        return OrtRuntime(path, device=device, threads=threads, **options)
    if backend == "torch":
        from engines.runtime.torch import TorchRuntime

        return TorchRuntime(path, device=device, threads=threads, **options)
    from engines.runtime.tensorrt import TensorRTRuntime

    return TensorRTRuntime(path, device=device, **options)
