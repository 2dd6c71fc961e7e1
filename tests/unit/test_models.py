"""Every network: shapes for RGB and RGB-D at odd sizes, dropout, backward, and ONNX export whose
ONNX Runtime output matches PyTorch on real CamVid images at two resolutions (dynamic H/W)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from engines.errors import SegstreamError  # noqa: E402
from engines.models import MODELS, build_model, model_summary  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed"),
]

NUM_CLASSES = 11
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_batch(paths: list[Path], size: tuple[int, int]) -> torch.Tensor:
    """Real images, RGB, resized to size=(w, h), ImageNet-normalized, N x 3 x H x W float32."""
    out = []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert bgr is not None, p
        rgb = cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        out.append(((rgb.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


@pytest.fixture(scope="module")
def images(camvid: Path) -> dict[str, torch.Tensor]:
    paths = sorted((camvid / "val" / "images").glob("*.jpg"))[:2]
    assert len(paths) == 2, "need two CamVid val images"
    return {"full": load_batch(paths, (480, 360)), "small": load_batch(paths, (264, 200))}


def calibrated(name: str, batch: torch.Tensor) -> torch.nn.Module:
    """The model with BatchNorm statistics taken from real images, so its logits are not near-flat
    (random-init logits make argmax comparisons meaningless)."""
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(batch)
    return model.eval()


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, images, tmp_path_factory) -> tuple[str, torch.nn.Module, ort.InferenceSession]:
    name = request.param
    model = calibrated(name, images["full"])
    path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
    torch.onnx.export(
        model,
        images["full"][:1],
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return name, model, session


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("channels", "h", "w"), [(3, 360, 480), (4, 200, 264)])
def test_forward_shape_and_backward(name: str, channels: int, h: int, w: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, in_channels=channels, dropout=0.2).train()
    x = torch.randn(2, channels, h, w)
    y = model(x)
    assert y.shape == (2, NUM_CLASSES, h, w)
    assert torch.isfinite(y).all()
    y.logsumexp(1).mean().backward()
    model(torch.randn(1, channels, 64, 96)).mean().backward()  # a batch of one trains too
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == channels
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_dropout_before_classifier(name: str) -> None:
    model = build_model(name, NUM_CLASSES, dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(d.p == 0.3 for d in drops)
    # dropout is active in training and off in eval: two train passes differ, two eval passes agree
    x = torch.randn(2, 3, 64, 96)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def _compare(session: ort.InferenceSession, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(x).numpy()
    out = session.run(None, {"images": x.numpy()})[0]
    assert out.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(out - ref).max()) <= 1e-3 * scale
    agree = float((out.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.999, f"argmax agreement {agree:.5f}"


def test_onnx_matches_torch_on_camvid(exported, images) -> None:
    _, model, session = exported
    _compare(session, model, images["full"])


def test_onnx_dynamic_resolution(exported, images) -> None:
    _, model, session = exported
    _compare(session, model, images["small"])


def test_unknown_model_names_valid_ones() -> None:
    with pytest.raises(SegstreamError) as e:
        build_model("segformer-xxl", NUM_CLASSES)
    msg = str(e.value)
    assert "segformer-xxl" in msg and all(n in msg for n in MODELS)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.5}, "dropout"),
        ({"bogus": 1}, "bogus"),
        ({"width": 0}, "width"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs: dict, needle: str) -> None:
    args = {"num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(SegstreamError, match=needle):
        build_model("fastscnn", **args)


@pytest.mark.parametrize(("h", "w"), [(12, 15), (7, 9), (1, 1), (23, 40)])
def test_export_safe_adaptive_pool_equals_torch(h: int, w: int) -> None:
    from engines.models.layers import adaptive_avg_pool

    x = torch.randn(2, 3, h, w)
    for bins in (1, 2, 3, 6):
        expected = torch.nn.functional.adaptive_avg_pool2d(x, bins)
        torch.testing.assert_close(adaptive_avg_pool(x, bins), expected)


def test_summary_counts_known_flops() -> None:
    # convpool at 480x360, 11 classes: conv 3->32 at full res, 32->64 at /2, 1x1 64->11 at /4;
    # one multiply-add = 2 FLOPs.
    params, gflops = model_summary(build_model("convpool", NUM_CLASSES), (480, 360))
    expected = 2 * (3 * 32 * 9 * 480 * 360 + 32 * 64 * 9 * 240 * 180 + 64 * 11 * 120 * 90)
    assert gflops == pytest.approx(expected / 1e9)
    assert params == (3 * 32 * 9 + 2 * 32) + (32 * 64 * 9 + 2 * 64) + (64 * 11 + 11)


def test_fastscnn_is_paper_sized_and_width_scales() -> None:
    params, _ = model_summary(build_model("fastscnn", 19))
    assert 1.0e6 < params < 1.3e6  # the paper reports 1.11 M for 19 classes
    wide, _ = model_summary(build_model("fastscnn", 19, width=1.5))
    assert wide > 1.8 * params


def test_importing_models_does_not_import_stream() -> None:
    code = "import sys, engines.models; print([m for m in sys.modules if m.split('.')[0] == 'stream'])"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_models_command_table_and_json(tmp_path: Path, capsys) -> None:
    from stream.cli import main

    path = tmp_path / "models.json"
    rc = main(["models", "--arch", "convpool", "--size", "96x64", "--runs", "1", "--warmup", "0",
               "--json", str(path)])  # fmt: skip
    assert rc == 0
    assert "convpool" in capsys.readouterr().out
    row = json.loads(path.read_text())["models"][0]
    assert row["name"] == "convpool" and row["params"] > 0 and row["fps"] > 0


def test_models_command_bad_arch_is_one_line_error(capsys) -> None:
    from stream.cli import main

    assert main(["models", "--arch", "nope", "--no-timing"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "fastscnn" in err and "Traceback" not in err
