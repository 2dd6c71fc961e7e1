"""engines.runtime: ONNX Runtime vs PyTorch on real CamVid images, preprocessing, errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from engines.export import export_checkpoint, load_images
from engines.runtime import BackendUnavailable, ModelFileError, ShapeError, load
from engines.runtime.preprocess import prepare_batch, resize_to
from tests.procs import run
from tests.unit.runtime_models import camvid_meta, trained_fastscnn


@pytest.fixture(scope="module")
def models(camvid: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, ONNX exported from it) for a briefly trained Fast-SCNN."""
    ckpt = trained_fastscnn(camvid, tmp_path_factory.getbasetemp() / "segstream-models")
    onnx_path = ckpt.with_suffix(".onnx")
    if not onnx_path.is_file():
        export_checkpoint(ckpt, onnx_path, verify_dir=camvid / "val", verify_count=2)
    return ckpt, onnx_path


@pytest.fixture(scope="module")
def val_frames(camvid: Path) -> list[np.ndarray]:
    return load_images(camvid / "val", 6)


def test_onnxruntime_and_torch_masks_agree_on_camvid(models, val_frames) -> None:
    ckpt, onnx_path = models
    ort_rt = load(onnx_path, device="cpu", threads=2)
    pt_rt = load(ckpt, device="cpu")
    assert ort_rt.backend == "onnxruntime" and pt_rt.backend == "torch"
    assert ort_rt.meta.classes == pt_rt.meta.classes and ort_rt.meta.input_size == pt_rt.meta.input_size
    a = ort_rt.predict(val_frames, confidence=True)
    b = pt_rt.predict(val_frames, confidence=True)
    ids_a, ids_b = np.stack(a.masks), np.stack(b.masks)
    agreement = float(np.mean(ids_a == ids_b))
    assert agreement >= 0.999, agreement
    # the model must be decisive for this to mean anything: not one class everywhere
    assert len(np.unique(ids_a)) >= 3
    conf_diff = np.abs(np.stack(a.confidence).astype(int) - np.stack(b.confidence))
    assert np.mean(conf_diff <= 1) >= 0.999


def test_predict_full_size_batches_and_confidence(models, val_frames) -> None:
    _, onnx_path = models
    rt = load(onnx_path, device="cpu", max_batch=2)
    frames = [val_frames[0], cv2.resize(val_frames[1], (640, 400)), val_frames[2]]  # 3 frames > max batch 2
    pred = rt.predict(frames, full_size=True, confidence=True)
    assert [m.shape for m in pred.masks] == [f.shape[:2] for f in frames]
    assert [c.shape for c in pred.confidence] == [f.shape[:2] for f in frames]
    assert pred.masks[0].dtype == np.uint8 and pred.masks[0].max() < rt.meta.classes.num_classes
    assert rt.predict(frames[:1]).confidence is None
    with pytest.raises(ShapeError, match="max batch 2"):
        rt.run(rt.prepare(frames))


def test_onnxruntime_dynamic_input_size_and_threads(models, val_frames) -> None:
    _, onnx_path = models
    rt = load(onnx_path, device="cpu", threads=1, input_size=(320, 224))
    assert rt.session.get_session_options().intra_op_num_threads == 1
    ids, conf = rt.run(rt.prepare(val_frames[:2]), confidence=True)
    assert ids.shape == conf.shape == (2, 224, 320)


def test_prepare_batch_matches_numpy_reference(camvid: Path, val_frames) -> None:
    meta = camvid_meta(camvid, "x", size=(96, 64))
    f = val_frames[0]
    got = prepare_batch([f], meta)
    rgb = cv2.resize(f, (96, 64), interpolation=cv2.INTER_LINEAR)[..., ::-1].astype(np.float32) / 255.0
    ref = ((rgb - np.array(meta.mean, np.float32)) / np.array(meta.std, np.float32)).transpose(2, 0, 1)
    assert got.shape == (1, 3, 64, 96) and got.dtype == np.float32
    assert np.abs(got[0] - ref).max() < 1e-4
    u8 = prepare_batch([f, f], meta, uint8=True)
    assert u8.shape == (2, 64, 96, 3) and u8.dtype == np.uint8
    with pytest.raises(ShapeError, match="4 channels"):
        prepare_batch([np.zeros((10, 10, 4), np.uint8)], meta)
    m = np.array([[0, 1], [2, 3]], np.uint8)
    assert resize_to(m, (4, 4)).tolist()[0] == [0, 0, 1, 1]


def test_torch_uint8_device_normalization_equals_float_path(models, val_frames) -> None:
    ckpt, _ = models
    rt = load(ckpt, device="cpu")
    meta = rt.meta
    ids_f, conf_f = rt.run(prepare_batch(val_frames[:2], meta), confidence=True)
    ids_u, conf_u = rt.run(prepare_batch(val_frames[:2], meta, uint8=True), confidence=True)
    assert np.mean(ids_f == ids_u) >= 0.999
    assert np.abs(conf_f.astype(int) - conf_u).max() <= 1


def test_garbage_and_foreign_model_files(tmp_path: Path, models) -> None:
    junk_onnx = tmp_path / "junk.onnx"
    junk_onnx.write_bytes(b"\x00garbage\xff" * 100)
    with pytest.raises(ModelFileError, match="junk.onnx: not a loadable ONNX model"):
        load(junk_onnx, device="cpu")

    _, onnx_path = models
    bare = onnx.load(str(onnx_path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="no 'segstream.meta' metadata"):
        load(tmp_path / "bare.onnx", device="cpu")
    bare.metadata_props.add(key="segstream.meta", value="{not json")
    onnx.save(bare, str(tmp_path / "badmeta.onnx"))
    with pytest.raises(ModelFileError, match="badmeta.onnx: model metadata is malformed"):
        load(tmp_path / "badmeta.onnx", device="cpu")

    junk_pt = tmp_path / "junk.pt"
    junk_pt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFileError, match="junk.pt: not a readable PyTorch checkpoint"):
        load(junk_pt, device="cpu")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a segstream checkpoint"):
        load(tmp_path / "foreign.pt", device="cpu")

    with pytest.raises(ModelFileError, match="unknown model file type '.bin'"):
        load(tmp_path / "model.bin")
    with pytest.raises(ModelFileError, match="not found"):
        load(tmp_path / "missing.onnx")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the no-GPU error cannot happen")
def test_missing_gpu_is_backend_unavailable(models) -> None:
    ckpt, onnx_path = models
    with pytest.raises(BackendUnavailable, match="CUDA is not usable"):
        load(ckpt, device="cuda")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="no CUDAExecutionProvider"):
            load(onnx_path, device="cuda")
    assert load(ckpt, device="auto").device == "cpu"


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run(*args, timeout=timeout)


def test_doctor_reports_backends() -> None:
    import json

    r = _cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["component"]: row for row in json.loads(r.stdout)}
    assert rows["onnxruntime"]["usable"] is True and "CPUExecutionProvider" in rows["onnxruntime"]["detail"]
    assert rows["torch (CPU)"]["usable"] is True
    assert {"tensorrt", "tensorrt_rtx", "GPU (nvidia-smi)", "torch (CUDA)"} <= set(rows)
    if not torch.cuda.is_available():
        assert rows["torch (CUDA)"]["usable"] is False and rows["torch (CUDA)"]["detail"]


def test_bench_infer_quick_writes_table_and_json(models, camvid: Path, tmp_path: Path) -> None:
    import json

    ckpt, _ = models
    out = tmp_path / "bench.json"
    r = _cli(
        "bench",
        "infer",
        "--quick",
        "--model",
        str(ckpt),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--backends",
        "onnxruntime,torch",
        "--frames",
        str(camvid / "val"),
        "--json",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "ONNX Runtime vs eager PyTorch (CPU, fp32, batch 1, 480x360)" in r.stdout
    doc = json.loads(out.read_text())
    timed = [c for c in doc["results"] if c["p50_ms"]]
    assert {c["backend"] for c in timed} == {"onnxruntime", "torch"}
    assert all(c["p99_ms"] >= c["p50_ms"] > 0 and c["fps"] > 0 for c in timed)
    assert doc["ort_vs_torch_cpu_batch1"]["480x360"] > 0
    bad = _cli("bench", "infer", "--backends", "nope")
    assert bad.returncode == 2 and "unknown nope" in bad.stderr
