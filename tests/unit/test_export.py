"""engines.export / `segstream export`: graph shape, metadata, dynamic axes, verification, CLI errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from engines.export import ExportError, export_onnx, get_meta, load_images, verify
from engines.meta import META_KEY, ModelMeta
from tests.procs import run
from tests.unit.runtime_models import TinyNet, camvid_meta, trained_fastscnn


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run(*args, timeout=300)


@pytest.fixture(scope="module")
def frames(camvid: Path) -> list[np.ndarray]:
    return load_images(camvid / "val", 2)


def test_export_graph_outputs_metadata_and_dynamic_axes(tmp_path: Path, camvid: Path, frames) -> None:
    torch.manual_seed(0)
    meta = camvid_meta(camvid, "tiny")
    rep = export_onnx(TinyNet(), meta, tmp_path / "m.onnx", verify_frames=frames, verify_source="camvid val")
    assert rep.dynamic_hw and rep.dynamic_batch and rep.simplified
    assert rep.verification.max_abs_diff <= rep.verification.tolerance
    assert rep.verification.mask_agreement >= 0.999

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    back = get_meta(model)
    assert back.classes == meta.classes and back.input_size == meta.input_size
    assert back.extra["onnx"]["dynamic_hw"] is True
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["ids", "confidence"]

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 192, 256), (3, 3, 100, 140)]:  # other batch, other (odd) resolution
        ids, conf = sess.run(None, {"images": np.random.rand(*shape).astype(np.float32)})
        assert ids.dtype == np.uint8 and conf.dtype == np.uint8
        assert ids.shape == conf.shape == (shape[0], *shape[2:])
        assert ids.max() < meta.classes.num_classes
        assert conf.min() >= 255 // meta.classes.num_classes  # max softmax >= 1/num_classes


def test_confidence_is_max_softmax(tmp_path: Path, camvid: Path, frames) -> None:
    torch.manual_seed(1)
    net, meta = TinyNet().eval(), camvid_meta(camvid, "tiny")
    export_onnx(net, meta, tmp_path / "m.onnx", verify_frames=frames)
    x = np.random.default_rng(0).normal(0, 3, (1, 3, 64, 96)).astype(np.float32)
    _, conf = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": x})
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x)), 1).max(1).values.numpy() * 255
    assert np.abs(conf.astype(np.float32) - ref).max() <= 1.0


class FixedPoolNet(nn.Module):
    """adaptive_avg_pool2d to a fixed grid: the TorchScript exporter cannot make H/W dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 11, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        g = nn.functional.adaptive_avg_pool2d(y, (4, 4))
        return y + nn.functional.interpolate(g, size=x.shape[2:], mode="bilinear", align_corners=False)


def test_falls_back_to_fixed_hw_with_a_notice(tmp_path: Path, camvid: Path, frames) -> None:
    meta = camvid_meta(camvid, "fixedpool")
    rep = export_onnx(FixedPoolNet(), meta, tmp_path / "m.onnx", verify_frames=frames)
    assert not rep.dynamic_hw
    assert any("fixed" in n for n in rep.notices), rep.notices
    shape = [
        d.dim_value or d.dim_param
        for d in onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    ]
    assert shape[2:] == [192, 256] and isinstance(shape[0], str)


def test_verification_catches_a_graph_that_differs(tmp_path: Path, camvid: Path, frames) -> None:
    torch.manual_seed(0)
    meta = camvid_meta(camvid, "tiny")
    export_onnx(TinyNet(), meta, tmp_path / "a.onnx", verify_frames=frames)
    torch.manual_seed(1)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        verify(onnx.load(str(tmp_path / "a.onnx")), TinyNet().eval(), frames, meta, source="camvid")


def test_old_opset_is_refused(tmp_path: Path, camvid: Path) -> None:
    with pytest.raises(ExportError, match="opset 13"):
        export_onnx(TinyNet(), camvid_meta(camvid, "tiny"), tmp_path / "m.onnx", opset=13)


def test_cli_exports_fastscnn_checkpoint_fp32_and_fp16(
    tmp_path: Path, camvid: Path, tmp_path_factory
) -> None:
    ckpt = trained_fastscnn(camvid, tmp_path_factory.getbasetemp() / "segstream-models")
    out = tmp_path / "f.onnx"
    r = _cli("export", str(ckpt), "-o", str(out), "--verify-data", str(camvid / "val"), "--verify-count", "2")
    assert r.returncode == 0, r.stderr
    assert "verified on 2 images" in r.stdout and "dynamic batch/H/W" in r.stdout
    meta = ModelMeta.from_json(next(p.value for p in onnx.load(str(out)).metadata_props if p.key == META_KEY))
    assert meta.arch == "fastscnn" and meta.extra["source"] == ckpt.name

    r16 = _cli(
        "export",
        str(ckpt),
        "-o",
        str(tmp_path / "f16.onnx"),
        "--fp16",
        "--verify-count",
        "1",
        "--verify-data",
        str(camvid / "val"),
    )
    assert r16.returncode == 0, r16.stderr
    assert "fp16" in r16.stdout
    assert (tmp_path / "f16.onnx").stat().st_size < 0.6 * out.stat().st_size

    # the CPU runtime cuts the float32 export's argmax head (engines.runtime.head); the float16 export's
    # head (casts around a half-precision Resize) is not of the form it reproduces and stays in the
    # graph; both give the graph's own ids
    import cv2
    import onnxruntime as ort

    from engines.runtime import load

    frame = cv2.imread(str(sorted((camvid / "val" / "images").glob("*.jpg"))[0]))
    for path, cut in ((out, True), (tmp_path / "f16.onnx", False)):
        rt = load(path, device="cpu", threads=1)
        assert (rt._head is not None) is cut
        x = rt.prepare([frame])
        ids, _ = rt.run(x)
        graph = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (want,) = graph.run(["ids"], {"images": x})
        assert (ids == want).mean() >= 0.9999
        rt.close()


def test_cli_bad_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    r = _cli("export", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    r = _cli("export", str(other))
    assert r.returncode == 2 and "not a segstream checkpoint" in r.stderr
