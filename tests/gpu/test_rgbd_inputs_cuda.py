"""Two-input RGB-D models (image, depth) on the GPU backends: PyTorch CUDA (FP32/FP16), ONNX Runtime's CUDA
provider and a TensorRT engine built from the two-input graph, each against the CPU PyTorch network on the
same colour + depth. Skips cleanly without a CUDA GPU (and each backend without its package)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.gpu.test_cuda_runtimes import _assert_agrees
from tests.unit.test_rgbd_inputs import SIZE, experiment, train_few_steps

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU: "
    + ("torch is a CPU-only build" if torch.version.cuda is None else "no device visible"),
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """(scenes, checkpoint .pt, two-input .onnx) of a mid-fusion model trained for a few dozen steps."""
    from engines.export import export_onnx
    from engines.runtime.torch import write_checkpoint

    scenes = experiment().generate(tmp_path_factory.mktemp("scenes"), 8, SIZE, seed=13)
    net, meta = train_few_steps("fastscnn-rgbd", scenes)
    out = tmp_path_factory.mktemp("model")
    export_onnx(net, meta, out / "m.onnx")
    write_checkpoint(out / "m.pt", net, meta, {"num_classes": 3, "in_channels": 4, "width": 0.5})
    return scenes, out / "m.pt", out / "m.onnx"


def _data(scenes: Path):
    from engines.depth import read_depth

    names = sorted((scenes / "image").glob("*.png"))[:4]
    return [cv2.imread(str(p)) for p in names], [read_depth(scenes / "depth" / p.name) for p in names]


def _reference(pt: Path, frames, depths) -> np.ndarray:
    from engines.runtime import load

    with load(pt, device="cpu") as rt:
        return rt.logits(rt.prepare(frames, depth=depths))


def test_torch_cuda_takes_image_and_depth(model) -> None:
    from engines.runtime import load

    scenes, pt, _ = model
    frames, depths = _data(scenes)
    ref = _reference(pt, frames, depths)
    rt32 = load(pt, device="cuda", fp16=False)
    assert not rt32.wants_uint8  # depth is 16-bit: RGB-D inputs go as float
    _assert_agrees(np.stack(rt32.predict(frames, depth=depths).masks), ref, 0.999, 0.01)
    rt16 = load(pt, device="cuda")
    _assert_agrees(np.stack(rt16.predict(frames, depth=depths).masks), ref, 0.99, 0.05)


def test_onnxruntime_cuda_takes_image_and_depth(model) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (CPU build)")
    from engines.runtime import load

    scenes, pt, onnx_path = model
    frames, depths = _data(scenes)
    rt = load(onnx_path, device="cuda")
    assert rt.providers[0] == "CUDAExecutionProvider"
    _assert_agrees(
        np.stack(rt.predict(frames, depth=depths).masks), _reference(pt, frames, depths), 0.999, 0.01
    )


def test_tensorrt_engine_takes_image_and_depth(model, tmp_path: Path) -> None:
    from engines.runtime import BackendUnavailable, load
    from engines.trt_compat import load_trt

    try:
        trt = load_trt()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    from engines.build import Profile, build_engine

    scenes, pt, onnx_path = model
    frames, depths = _data(scenes)
    w, h = SIZE
    build_engine(
        onnx_path, tmp_path / "m.engine", precision="fp32", profile=Profile((1, h, w), (2, h, w), (4, h, w))
    )
    try:
        rt = load(tmp_path / "m.engine")
    except BackendUnavailable as e:  # e.g. TensorRT-RTX on a non-RTX GPU
        pytest.skip(f"{trt.label}: {e}")
    assert sorted(rt.inputs) == ["depth", "image"]
    ref = _reference(pt, frames, depths)
    ids, conf = rt.run(rt.prepare(frames, depth=depths), confidence=True)
    _assert_agrees(ids, ref, 0.999, 0.01)
    assert conf.shape == ids.shape == (4, h, w)
    ids1, _ = rt.run(rt.prepare(frames[:1], depth=depths[:1]))  # buffers reused for a smaller batch
    assert ids1.shape == (1, h, w) and np.mean(ids1[0] == ids[0]) >= 0.999
