"""RGB-D models with two inputs, ``image`` and ``depth``: the export (early fusion concatenates in the
graph, mid fusion feeds its depth branch), ONNX Runtime against PyTorch, the checkpoint backend, a
TensorRT-RTX engine built from the two-input graph, Triton's config, the contract, and files exported
before two inputs (one 4-channel ``images``) still running. Tiny networks trained for a few dozen steps on
generated RGB-D scenes (tools/rgbd_experiment.py), so the weights are not just their initialization."""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from engines.depth import DepthSpec, RGBDDataset, read_depth, rgbd_input
from engines.export import export_onnx, set_meta
from engines.meta import ClassTable, ModelMeta
from engines.runtime import ModelFileError, ShapeError, load
from engines.runtime.inputs import as_inputs, pack, unpack

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[2]
SIZE = (64, 48)  # w, h
SPEC = DepthSpec(max_mm=5000.0)


def experiment():
    spec = importlib.util.spec_from_file_location("rgbd_experiment", REPO / "tools" / "rgbd_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return experiment().generate(tmp_path_factory.mktemp("scenes"), 8, SIZE, seed=5)


def rgbd_meta(arch: str, classes: ClassTable) -> ModelMeta:
    return ModelMeta(
        arch=arch,
        classes=classes,
        input_size=SIZE,
        channels=4,
        max_batch=4,
        extra={"arch_args": {"in_channels": 4, "width": 0.5}, "depth": SPEC.to_dict()},
    )


def train_few_steps(arch: str, scenes: Path, steps: int = 60):
    """A Fast-SCNN (early: 4-channel input; mid: fastscnn-rgbd) after 60 Adam steps on the scenes: about
    2 s here, and enough that it tells the three classes apart (measured: 92-95% pixel accuracy, every
    class predicted), so masks that agree are not all one class."""
    from engines.models import build_model

    torch.manual_seed(0)
    ds = RGBDDataset.load(scenes)
    meta = rgbd_meta(arch, ds.rgb.classes)
    x = torch.from_numpy(rgbd_input(ds.rgb.images, ds.depth, meta.mean, meta.std, SPEC))
    y = torch.from_numpy(ds.rgb.labels.astype(np.int64))
    net = build_model(arch, num_classes=3, in_channels=4, width=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    # one thread: measured on the shared 2-core machine under load, 8 s against 27 s with two threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval(), meta


@pytest.fixture(scope="module", params=["early", "mid"])
def exported(request, scenes: Path, tmp_path_factory: pytest.TempPathFactory):
    """(network, its meta, the exported two-input .onnx, a checkpoint .pt of the same weights)."""
    from engines.runtime.torch import write_checkpoint

    arch = "fastscnn" if request.param == "early" else "fastscnn-rgbd"
    net, meta = train_few_steps(arch, scenes)
    out = tmp_path_factory.mktemp(request.param)
    report = export_onnx(net, meta, out / "m.onnx")
    write_checkpoint(out / "m.pt", net, meta, {"num_classes": 3, "in_channels": 4, "width": 0.5})
    return request.param, net, meta, report, out / "m.onnx", out / "m.pt"


def frames_and_depth(scenes: Path, n: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    names = sorted((scenes / "image").glob("*.png"))[:n]
    return [cv2.imread(str(p)) for p in names], [read_depth(scenes / "depth" / p.name) for p in names]


def torch_logits(net, inputs: dict) -> np.ndarray:
    """The network as trained: one 4-channel tensor, RGB then depth."""
    x = np.concatenate([inputs["image"], inputs["depth"]], axis=1)
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def test_export_has_two_named_inputs_and_metadata_says_so(exported) -> None:
    fusion, _, meta, report, path, _ = exported
    graph = onnx.load(str(path))
    dims = {
        i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.graph.input
    }
    assert dims == {"image": ["batch", 3, "height", "width"], "depth": ["batch", 1, "height", "width"]}
    assert [o.name for o in graph.graph.output] == ["ids", "confidence"]  # outputs as before
    saved = json.loads(next(p.value for p in graph.metadata_props if p.key == "segstream.meta"))
    assert saved["extra"]["inputs"] == [{"name": "image", "channels": 3}, {"name": "depth", "channels": 1}]
    assert saved["channels"] == 4 and DepthSpec.from_dict(saved["extra"]["depth"]) == SPEC
    ops = {n.op_type for n in graph.graph.node}
    if fusion == "mid":  # the depth input feeds the depth branch: a Conv reads it directly
        assert any(n.op_type == "Conv" and n.input[0] == "depth" for n in graph.graph.node)
    else:  # early fusion: image and depth concatenated inside the graph, then the first convolution
        assert "Concat" in ops and any(
            n.op_type == "Concat" and list(n.input[:2]) == ["image", "depth"] for n in graph.graph.node
        )
    assert report.dynamic_hw and report.verification.mask_agreement == 1.0


def test_onnxruntime_equals_pytorch_on_real_colour_and_depth(exported, scenes: Path) -> None:
    _, net, _, _, path, _ = exported
    frames, depths = frames_and_depth(scenes)
    with load(path, device="cpu") as rt:
        inputs = rt.prepare(frames, depth=depths)
        assert set(inputs) == {"image", "depth"}
        assert inputs["image"].shape == (3, 3, 48, 64) and inputs["depth"].shape == (3, 1, 48, 64)
        ref = torch_logits(net, inputs)
        scale = float(np.abs(ref).max())
        assert scale > 1e-2  # trained weights: logits far from the initialization's near-zeros
        got = rt.logits(inputs)
        assert np.abs(got - ref).max() <= 1e-4 * scale
        ids, conf = rt.run(inputs, confidence=True)
        assert np.array_equal(ids, ref.argmax(1)) and conf.dtype == np.uint8
        assert len(np.unique(ids)) > 1  # a trained model: not one class everywhere
        # the depth input is wired through: other depth, other logits (and ORT still equals PyTorch)
        far = rt.prepare(frames, depth=[np.full_like(d, 4500) for d in depths])
        assert np.array_equal(far["image"], inputs["image"])
        assert np.allclose(far["depth"], (0.9 - 0.5) / 0.25)
        ref_far = torch_logits(net, far)
        assert np.abs(ref_far - ref).max() > 10 * np.abs(got - ref).max() + 1e-6
        assert np.abs(rt.logits(far) - ref_far).max() <= 1e-4 * scale
        # full-size masks through predict, frames of another size resized as training did
        big = [cv2.resize(f, (128, 96)) for f in frames]
        big_d = [cv2.resize(d, (128, 96), interpolation=cv2.INTER_NEAREST) for d in depths]
        masks = rt.predict(big, depth=big_d, full_size=True).masks
        assert [m.shape for m in masks] == [(96, 128)] * 3


def test_checkpoint_backend_takes_the_same_two_inputs(exported, scenes: Path) -> None:
    _, _, _, _, onnx_path, pt_path = exported
    frames, depths = frames_and_depth(scenes)
    with load(pt_path, device="cpu") as pt, load(onnx_path, device="cpu") as ox:
        inputs = pt.prepare(frames, depth=depths)
        assert np.array_equal(pt.run(inputs)[0], ox.run(inputs)[0])
        lt = pt.logits(inputs)
        assert np.abs(lt - ox.logits(inputs)).max() <= 1e-4 * np.abs(lt).max()


def test_packed_batches_unpack_to_the_same_masks(exported, scenes: Path) -> None:
    """The pipeline's form: preprocess packs each frame's inputs (one 4 x H x W array per ring slot),
    infer stacks frames into a batch and unpacks views; a batch gives what single frames give."""
    _, _, _, _, path, _ = exported
    frames, depths = frames_and_depth(scenes)
    with load(path, device="cpu") as rt:
        packed = [pack(rt.prepare([f], depth=[d]), rt.meta)[0] for f, d in zip(frames, depths, strict=True)]
        assert packed[0].shape == (4, 48, 64) and packed[0].dtype == np.float32
        batch = unpack(np.stack(packed), rt.meta)
        assert batch["image"].base is not None  # views of the stacked array, no copy
        one_by_one = np.concatenate([rt.run(unpack(p[None], rt.meta))[0] for p in packed])
        assert np.array_equal(rt.run(batch)[0], one_by_one)


def test_wrong_inputs_are_one_clear_error(exported, scenes: Path) -> None:
    _, _, _, _, path, _ = exported
    frames, depths = frames_and_depth(scenes, 2)
    with load(path, device="cpu") as rt:
        inputs = rt.prepare(frames, depth=depths)
        with pytest.raises(ShapeError, match=r"takes two inputs, \{'image': N x 3 x H x W"):
            rt.run(np.concatenate([inputs["image"], inputs["depth"]], axis=1))
        with pytest.raises(
            ShapeError, match=r"inputs \['image'\] given; this model takes \['image', 'depth'\]"
        ):
            rt.run({"image": inputs["image"]})
        with pytest.raises(ShapeError, match="inputs disagree on N x H x W"):
            rt.run({"image": inputs["image"], "depth": inputs["depth"][:1]})
        with pytest.raises(ShapeError, match="an RGB frame, but this is an RGB-D model"):
            rt.predict(frames)  # colour without depth


def legacy_onnx(net, meta: ModelMeta, path: Path) -> Path:
    """An RGB-D model file as `segstream export` wrote it before two inputs: one 4-channel 'images'."""
    from engines.runtime.torch import SegmentationHead

    buf = io.BytesIO()
    w, h = meta.input_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SegmentationHead(net).eval(), (torch.zeros(1, 4, h, w),), buf, input_names=["images"],
            output_names=["ids", "confidence"], opset_version=17, dynamo=False,
            dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}, "ids": {0: "b", 1: "h", 2: "w"},
                          "confidence": {0: "b", 1: "h", 2: "w"}},
        )  # fmt: skip
    model = onnx.load_from_string(buf.getvalue())
    set_meta(model, meta)
    onnx.save(model, str(path))
    return path


def test_four_channel_files_exported_before_still_run(exported, scenes: Path, tmp_path: Path) -> None:
    """Decision: old one-input RGB-D ONNX files keep loading; every runtime takes the same {"image",
    "depth"} for them and concatenates the two for the graph's one 'images' input."""
    _, net, meta, _, path, _ = exported
    old = legacy_onnx(net, meta, tmp_path / "old.onnx")
    assert [i.name for i in onnx.load(str(old)).graph.input] == ["images"]
    frames, depths = frames_and_depth(scenes)
    with load(old, device="cpu") as legacy, load(path, device="cpu") as new:
        inputs = legacy.prepare(frames, depth=depths)
        assert np.array_equal(legacy.run(inputs)[0], new.run(inputs)[0])
        assert (
            np.abs(legacy.logits(inputs) - new.logits(inputs)).max()
            <= 1e-4 * np.abs(new.logits(inputs)).max()
        )


def test_tensorrt_rtx_builds_an_engine_with_profiles_for_both_inputs(exported, tmp_path: Path) -> None:
    trt_compat = pytest.importorskip("engines.trt_compat")
    from engines.build import Profile, build_engine, read_engine_header
    from engines.runtime import BackendUnavailable

    try:
        trt = trt_compat.load_trt()
    except BackendUnavailable as e:
        pytest.skip(f"no TensorRT flavour installed: {e}")
    _, _, _, _, path, _ = exported
    prof = Profile((1, 32, 32), (2, 48, 64), (4, 96, 128))
    out = tmp_path / "m.engine"
    rep = build_engine(path, out, precision="fp32", profile=prof)
    assert out.stat().st_size == rep.size_bytes > 10_000
    header, _ = read_engine_header(out)
    assert header.profile == prof and header.trt_flavour == trt.flavour
    assert [d["name"] for d in header.meta.extra["inputs"]] == ["image", "depth"]
    # the network TensorRT parsed has both inputs, with the channel counts the profile was set with
    mod = trt.module
    log = trt_compat.capturing_logger(trt, False)
    network = mod.Builder(log).create_network(0)
    assert mod.OnnxParser(network, log).parse(path.read_bytes())
    got = {network.get_input(i).name: network.get_input(i).shape[1] for i in range(network.num_inputs)}
    assert got == {"image": 3, "depth": 1}


def test_triton_config_declares_both_inputs(exported, tmp_path: Path) -> None:
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
    from google.protobuf import text_format

    from engines.triton_repo import RepoOptions, write_repo

    _, _, _, _, path, _ = exported
    folder = write_repo(path, tmp_path / "repo", RepoOptions(name="rgbd"))
    c = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [
        ("image", mc.DataType.TYPE_FP32, [3, -1, -1]),
        ("depth", mc.DataType.TYPE_FP32, [1, -1, -1]),
    ]


def test_contract_names_a_missing_or_wrong_depth_input(exported) -> None:
    from engines.runtime.contract import TensorSpec, check_io

    _, _, _, _, path, _ = exported
    with load(path, device="cpu") as rt:
        meta = rt.meta
    outs = [TensorSpec("ids", "uint8", (None, None, None))]
    image = TensorSpec("image", "float32", (None, 3, None, None))
    with pytest.raises(ModelFileError, match=r"no 'depth' input \(inputs: image\)"):
        check_io("m.onnx", meta, [image], outs)
    with pytest.raises(ModelFileError, match="input 'depth' takes 3 channels but the metadata says 1"):
        check_io("m.onnx", meta, [image, TensorSpec("depth", "float32", (None, 3, None, None))], outs)
    check_io("m.onnx", meta, [image, TensorSpec("depth", "float32", (None, 1, None, None))], outs)


def test_rgb_models_keep_one_images_input(onnx_model: Path) -> None:
    """RGB models are untouched: one 'images' input, a plain array to run, no 'inputs' in the metadata."""
    graph = onnx.load(str(onnx_model))
    assert [i.name for i in graph.graph.input] == ["images"]
    with load(onnx_model, device="cpu") as rt:
        assert "inputs" not in rt.meta.extra
        x = rt.prepare([np.zeros((48, 64, 3), np.uint8)])
        assert isinstance(x, np.ndarray) and as_inputs(x, rt.meta).keys() == {"images"}
        assert np.array_equal(rt.run(x)[0], rt.run({"images": x})[0])
        with pytest.raises(ShapeError, match="depth was given but this model takes RGB only"):
            rt.prepare([np.zeros((48, 64, 3), np.uint8)], depth=[np.zeros((48, 64), np.uint16)])
