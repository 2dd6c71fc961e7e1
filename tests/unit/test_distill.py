"""Knowledge distillation (`segstream train --teacher`): the KL term itself, teachers from .pt and .onnx
seeing the student's batch in their own normalization, training steps that log a decreasing KL term, and
teachers whose classes do not match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engines.losses import DistillKL
from engines.meta import ClassTable, ModelMeta
from engines.models import build_model
from engines.runtime.torch import write_checkpoint
from engines.teacher import Teacher, TeacherError
from engines.train import TrainConfig, TrainError, train
from tests.procs import run
from tests.unit.tiny_training import quiet, tiny_config

TEACHER_NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # deliberately not the student's (ImageNet) one


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(16, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny(arch: str, **kw) -> nn.Module:
    return TinyNet(**kw)


def make_teacher(path: Path, classes: ClassTable, sharpness: float = 8.0) -> Path:
    """A real convpool checkpoint whose classifier is scaled up: confident, image-dependent predictions."""
    torch.manual_seed(1)
    net = build_model("convpool", num_classes=classes.num_classes, dropout=0.0)
    with torch.no_grad():
        net.classifier[-1].weight.mul_(sharpness * 100)
    net.eval()
    meta = ModelMeta("convpool", classes, (96, 72), mean=TEACHER_NORM[0], std=TEACHER_NORM[1])
    args = {"num_classes": classes.num_classes, "in_channels": 3, "dropout": 0.0}
    return write_checkpoint(path, net, meta, args)


@pytest.fixture(scope="module")
def classes(camvid: Path) -> ClassTable:
    return ClassTable.from_json_file(camvid / "classes.json")


@pytest.fixture(scope="module")
def teacher_pt(classes: ClassTable, tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", classes)


def cfg(camvid: Path, out: Path, **kw) -> TrainConfig:
    return tiny_config(
        camvid, out, **{"val_data": [], "data_size": "96x72", "batch_size": 4, "epochs": 6, "lr": 0.01, **kw}
    )


# ------------------------------------------------------------------ the loss


def test_kl_term_values() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 4, 6), torch.randn(2, 5, 4, 6)
    y = torch.randint(0, 5, (2, 4, 6))
    y[0, 0, :] = 255  # ignored pixels take no part
    kd = DistillKL(5, 255, temperature=3.0)
    assert float(kd(t, t, y)) == pytest.approx(0.0, abs=1e-6)
    valid = y != 255
    ref = F.kl_div(F.log_softmax(s / 3, 1), F.log_softmax(t / 3, 1), log_target=True, reduction="none").sum(1)
    assert float(kd(s, t, y)) == pytest.approx(float(ref[valid].mean() * 9), rel=1e-5)
    # a teacher at another resolution is resized to the student's
    assert float(kd(s, F.interpolate(t, size=(8, 12), mode="bilinear", align_corners=False), y)) > 0
    # gradients reach the student only
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd(s, t.detach(), y).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(Exception, match="--distill-temp must be > 0"):
        DistillKL(5, 255, temperature=0)


# ------------------------------------------------------------------ teachers


def test_teacher_sees_the_batch_in_its_own_normalization(
    teacher_pt: Path, classes: ClassTable, tmp_path: Path
) -> None:
    from engines.export import export_onnx
    from engines.runtime.torch import model_from_checkpoint

    net, meta, _ = model_from_checkpoint(teacher_pt)
    smean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    sstd = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x01 = torch.rand(2, 3, 72, 96)
    xs = (x01 - smean) / sstd  # what the student's augmenter hands over
    with torch.no_grad():
        want = net((x01 - 0.5) / 0.25)
    pt = Teacher(teacher_pt, torch.device("cpu"))
    got = pt(xs, smean, sstd)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)
    # the same teacher exported to ONNX gives the same logits (read from the input of its ArgMax)
    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(net, meta, onnx_path)
    ox = Teacher(onnx_path, torch.device("cpu"), threads=1)
    assert ox.backend == "onnxruntime" and ox.classes == classes
    assert torch.allclose(ox(xs, smean, sstd), want, rtol=1e-4, atol=1e-3)


def test_teacher_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="file not found"):
        Teacher(tmp_path / "nope.pt", torch.device("cpu"))
    bad = tmp_path / "teacher.txt"
    bad.write_text("x")
    with pytest.raises(TeacherError, match=r"expected a \.pt checkpoint or an \.onnx model"):
        Teacher(bad, torch.device("cpu"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx")
    with pytest.raises(TeacherError, match="not a readable ONNX model"):
        Teacher(junk, torch.device("cpu"))


# ------------------------------------------------------------------ training


def test_training_with_a_teacher_logs_a_decreasing_kl_term(
    camvid: Path, teacher_pt: Path, tmp_path: Path
) -> None:
    run = tmp_path / "kd"
    train(
        cfg(camvid, run, teacher=str(teacher_pt), distill_weight=2.0, distill_temp=1.0),
        console=quiet(),
        builder=tiny,
    )
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    kd = [r["train_distill"] for r in rows]
    assert len(kd) == 6 and all(v > 0 for v in kd)
    assert kd[-1] < 0.8 * kd[0], kd
    # the logged loss holds the CE and the weighted KL term
    assert all(r["train_loss"] > 2.0 * r["train_distill"] for r in rows)
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["teacher"]["path"] == str(teacher_pt) and resolved["teacher"]["arch"] == "convpool"
    assert resolved["distill"] == {"weight": 2.0, "temperature": 1.0}
    # without a teacher there is no KL column
    plain = tmp_path / "plain"
    train(cfg(camvid, plain, epochs=1), console=quiet(), builder=tiny)
    assert "train_distill" not in json.loads((plain / "log.jsonl").read_text().splitlines()[0])


def test_training_with_an_onnx_teacher(camvid: Path, teacher_pt: Path, tmp_path: Path) -> None:
    from engines.export import export_onnx
    from engines.runtime.torch import model_from_checkpoint

    net, meta, _ = model_from_checkpoint(teacher_pt)
    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(net, meta, onnx_path)
    run = tmp_path / "kd-onnx"
    train(cfg(camvid, run, teacher=str(onnx_path), epochs=2), console=quiet(), builder=tiny)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["train_distill"] > 0 for r in rows)
    assert json.loads((run / "config.json").read_text())["resolved"]["teacher"]["backend"] == "onnxruntime"


def test_teacher_with_other_classes_is_rejected(camvid: Path, tmp_path: Path) -> None:
    other = ClassTable(("road", "car", "person"), ((1, 1, 1), (2, 2, 2), (3, 3, 3)), ignore_index=None)
    path = make_teacher(tmp_path / "other.pt", other)
    with pytest.raises(
        TeacherError, match=r"its 3 classes \(road, car, person\) differ from the training data's 11"
    ):
        train(cfg(camvid, tmp_path / "r", teacher=str(path)), console=quiet(), builder=tiny)
    r = run(
        "train", "--data", camvid / "train", "--teacher", path, "--epochs", "1", "--out", tmp_path / "cli",
        timeout=300,
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "differ from the training data's 11" in lines[-1], r.stderr
    with pytest.raises(TrainError, match="--distill-weight/--distill-temp need a --teacher MODEL"):
        train(cfg(camvid, tmp_path / "w", distill_weight=1.0), console=quiet(), builder=tiny)
    with pytest.raises(TrainError, match="--teacher .*missing.pt: file not found"):
        train(
            cfg(camvid, tmp_path / "m", teacher=str(tmp_path / "missing.pt")), console=quiet(), builder=tiny
        )
