"""CUDA paths of engines.runtime: PyTorch FP32/FP16 on the GPU, GPU-side normalization, batching, and
TensorRT / ONNX Runtime CUDA where installed. Skips cleanly without a CUDA GPU.

Model: $SEGSTREAM_TEST_MODEL (a trained checkpoint) if set, else a Fast-SCNN briefly trained on the
CamVid fixtures (tests/fixtures/camvid). Comparisons allow only near-tie pixels to differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU: "
    + ("torch is a CPU-only build" if torch.version.cuda is None else "no device visible"),
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, camvid: Path) -> Path:
    env = os.environ.get("SEGSTREAM_TEST_MODEL")
    if env:
        return Path(env)
    from tests.unit.runtime_models import trained_fastscnn

    return trained_fastscnn(camvid, tmp_path_factory.mktemp("gpu-models"))


@pytest.fixture(scope="module")
def frames(camvid: Path) -> list[np.ndarray]:
    from engines.export import load_images

    return load_images(camvid / "val", 4)


def _reference(checkpoint: Path, frames, size=None):
    """CPU FP32 logits of the checkpoint's network on the frames (the ground truth here)."""
    from engines.runtime.torch import TorchRuntime

    rt = TorchRuntime(checkpoint, device="cpu", input_size=size)
    batch = rt.prepare(frames)
    with torch.inference_mode():
        return rt.model.net(torch.from_numpy(batch)).float().numpy()


def _assert_agrees(ids: np.ndarray, ref_logits: np.ndarray, min_raw: float, rel_eps: float) -> None:
    """ids == argmax(ref) on >= min_raw of pixels, or every differing pixel is a near-tie."""
    ref_ids = ref_logits.argmax(1)
    mismatch = ids != ref_ids
    raw = 1.0 - float(mismatch.mean())
    if raw >= min_raw:
        return
    top2 = np.sort(ref_logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    eps = rel_eps * max(1e-6, float(np.abs(ref_logits).max()))
    clear = int(np.count_nonzero(mismatch & (margin > eps)))
    assert clear == 0, f"agreement {raw:.4%}; {clear} differing pixels have a top-2 margin > {eps:.3g}"


def test_torch_cuda_fp32_and_fp16_match_cpu(checkpoint: Path, frames) -> None:
    from engines.runtime import load

    ref = _reference(checkpoint, frames)
    rt32 = load(checkpoint, device="cuda", fp16=False)
    assert rt32.device.startswith("cuda") and rt32.wants_uint8
    ids32 = np.stack(rt32.predict(frames).masks)
    _assert_agrees(ids32, ref, 0.999, 0.01)  # TF32 convolutions: small differences
    rt16 = load(checkpoint, device="cuda")
    assert rt16.fp16
    pred = rt16.predict(frames, confidence=True)
    _assert_agrees(np.stack(pred.masks), ref, 0.99, 0.05)
    assert pred.confidence[0].dtype == np.uint8


def test_gpu_normalization_equals_cpu_blob(checkpoint: Path, frames) -> None:
    from engines.runtime.preprocess import prepare_batch
    from engines.runtime.torch import TorchRuntime

    rt = TorchRuntime(checkpoint, device="cuda", fp16=False)
    a, ca = rt.run(prepare_batch(frames, rt.meta, uint8=True), confidence=True)
    b, cb = rt.run(prepare_batch(frames, rt.meta, uint8=False), confidence=True)
    assert np.mean(a == b) >= 0.999
    assert np.abs(ca.astype(int) - cb).max() <= 2


def test_cuda_batching_sizes_and_full_size(checkpoint: Path, frames) -> None:
    from engines.runtime import ShapeError, load

    rt = load(checkpoint, device="cuda", input_size=(1280, 720), max_batch=4)
    pred = rt.predict(frames * 2, full_size=True)  # 8 frames -> two batches of 4
    assert len(pred.masks) == 8 and pred.masks[0].shape == frames[0].shape[:2]
    with pytest.raises(ShapeError, match="max batch 4"):
        rt.run(rt.prepare(frames * 2))


def test_onnxruntime_cpu_and_torch_cuda_agree(checkpoint: Path, frames, tmp_path: Path) -> None:
    from engines.export import export_checkpoint
    from engines.runtime import load

    onnx_path = tmp_path / "m.onnx"
    export_checkpoint(checkpoint, onnx_path)
    ids_ort = np.stack(load(onnx_path, device="cpu").predict(frames).masks)
    ref = _reference(checkpoint, frames)
    _assert_agrees(ids_ort, ref, 0.999, 1e-3)
    ids_cuda = np.stack(load(checkpoint, device="cuda", fp16=False).predict(frames).masks)
    assert np.mean(ids_ort == ids_cuda) >= 0.99


def test_onnxruntime_cuda_provider(checkpoint: Path, frames, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (CPU build)")
    from engines.export import export_checkpoint
    from engines.runtime import load

    export_checkpoint(checkpoint, tmp_path / "m.onnx")
    rt = load(tmp_path / "m.onnx", device="cuda")
    assert rt.providers[0] == "CUDAExecutionProvider"
    _assert_agrees(np.stack(rt.predict(frames).masks), _reference(checkpoint, frames), 0.999, 0.01)


def test_tensorrt_engine_runs_with_dynamic_shapes(checkpoint: Path, frames, tmp_path: Path) -> None:
    from engines.runtime import BackendUnavailable, ShapeError, load
    from engines.trt_compat import load_trt

    try:
        trt = load_trt()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    from engines.build import Profile, build_engine
    from engines.export import export_checkpoint

    export_checkpoint(checkpoint, tmp_path / "m.onnx")
    prof = Profile((1, 256, 320), (1, 360, 480), (4, 720, 1280))
    build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="fp16", profile=prof)
    try:
        rt = load(tmp_path / "m.engine")
    except BackendUnavailable as e:  # e.g. TensorRT-RTX on a non-RTX GPU
        pytest.skip(f"{trt.label}: {e}")
    ref = _reference(checkpoint, frames, size=rt.meta.input_size)
    _assert_agrees(np.stack(rt.predict(frames).masks), ref, 0.99, 0.05)
    big = load(tmp_path / "m.engine", input_size=(1280, 720))
    ids, conf = big.run(big.prepare(frames), confidence=True)  # buffers grow
    assert ids.shape == conf.shape == (4, 720, 1280)
    ids, _ = big.run(big.prepare(frames[:1]))  # and are reused for a smaller batch
    assert ids.shape == (1, 720, 1280)
    with pytest.raises(ShapeError, match="outside"):
        big.run(np.zeros((1, 100, 100, 3), np.uint8))
