"""The model contract (engines.runtime.contract): models that break it, built for real with onnx.helper, and
files that are no model at all, fail at load with one line naming the file and the fault — through
``engines.runtime.load``, through the supervisor's light probe, and through ``segstream run`` (a real process:
exit 2, one line, no traceback, nothing written because no stage was started)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh

from engines.meta import META_KEY, ClassTable, ModelMeta
from engines.runtime import ModelFileError, load
from engines.runtime.contract import read_graph
from engines.runtime.probe import probe
from tests.procs import run

REPO = Path(__file__).resolve().parents[2]
W, H = 64, 48
META = ModelMeta(
    arch="test",
    classes=ClassTable(
        names=tuple(f"c{i}" for i in range(11)), palette=tuple((20 * i, 10 * i, i) for i in range(11))
    ),
    input_size=(W, H),
    max_batch=4,
)
RNG = np.random.default_rng(0)
DYN = ["batch", 3, "height", "width"]


def save(path: Path, nodes, outputs, inits=(), inputs=None, meta: ModelMeta = META) -> Path:
    """A checked ONNX model with segstream metadata: ``outputs`` are (name, elem type, shape or None)."""
    inputs = inputs or [oh.make_tensor_value_info("images", T.FLOAT, DYN)]
    outs = [
        oh.make_tensor_value_info(n, t, s) if s is not None else oh.make_tensor_value_info(n, t, None)
        for n, t, s in outputs
    ]
    graph = oh.make_graph(nodes, path.stem, inputs, outs, initializer=list(inits))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=META_KEY, value=meta.to_json())
    if all(s is not None for _, _, s in outputs):  # the checker insists on declared output shapes
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def weights(name: str, shape: tuple[int, ...]):
    return nh.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def segmenter(path: Path, classes: int = 11, *, cast: bool = True, **kw) -> Path:
    """1x1 conv to ``classes`` logits, ArgMax over the class axis, uint8: the contract's minimal model."""
    nodes = [
        oh.make_node("Conv", ["images", "W"], ["logits"], kernel_shape=[1, 1]),
        oh.make_node("ArgMax", ["logits"], ["am" if cast else "ids"], axis=1, keepdims=0),
    ]
    if cast:
        nodes.append(oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8))
    out = ("ids", T.UINT8 if cast else T.INT64, ["batch", "height", "width"])
    return save(path, nodes, [out], [weights("W", (classes, 3, 1, 1))], **kw)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# -- models that break the contract -------------------------------------------------------------------
def logits_1000(path: Path) -> Path:
    """An ImageNet-style classifier head: 'ids' is 1x1000 float logits."""
    nodes = [
        oh.make_node("GlobalAveragePool", ["images"], ["p"]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("MatMul", ["f", "W"], ["ids"]),
    ]
    inputs = [oh.make_tensor_value_info("images", T.FLOAT, [1, 3, H, W])]
    return save(path, nodes, [("ids", T.FLOAT, [1, 1000])], [weights("W", (3, 1000))], inputs=inputs)


def float_image(path: Path) -> Path:
    """'ids' is a 1x3xHxW float image (once a cv2 traceback in the overlay stage)."""
    return save(path, [oh.make_node("Identity", ["images"], ["ids"])], [("ids", T.FLOAT, DYN)])


def float_confidence(path: Path) -> Path:
    nodes = [
        oh.make_node("Conv", ["images", "W"], ["logits"], kernel_shape=[1, 1]),
        oh.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
        oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
        oh.make_node("ReduceMax", ["logits"], ["confidence"], keepdims=0, axes=[1]),
    ]
    outs = [
        ("ids", T.UINT8, ["batch", "height", "width"]),
        ("confidence", T.FLOAT, ["batch", "height", "width"]),
    ]
    return save(path, nodes, outs, [weights("W", (11, 3, 1, 1))])


def wrong_input_name(path: Path) -> Path:
    inputs = [oh.make_tensor_value_info("input", T.FLOAT, DYN)]
    nodes = [
        oh.make_node("ArgMax", ["input"], ["am"], axis=1, keepdims=0),
        oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
    ]
    return save(path, nodes, [("ids", T.UINT8, None)], inputs=inputs)


def extra_input(path: Path) -> Path:
    inputs = [
        oh.make_tensor_value_info("images", T.FLOAT, DYN),
        oh.make_tensor_value_info("scale", T.FLOAT, [1]),
    ]
    nodes = [
        oh.make_node("Mul", ["images", "scale"], ["x"]),
        oh.make_node("ArgMax", ["x"], ["am"], axis=1, keepdims=0),
        oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
    ]
    return save(path, nodes, [("ids", T.UINT8, None)], inputs=inputs)


def fixed_size_mismatch(path: Path) -> Path:
    """The graph takes 320x240 only; the metadata says 64x48 (every frame would be a ShapeError)."""
    inputs = [oh.make_tensor_value_info("images", T.FLOAT, ["batch", 3, 240, 320])]
    nodes = [
        oh.make_node("Conv", ["images", "W"], ["logits"], kernel_shape=[1, 1]),
        oh.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
        oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
    ]
    return save(
        path, nodes, [("ids", T.UINT8, ["batch", 240, 320])], [weights("W", (11, 3, 1, 1))], inputs=inputs
    )


BROKEN = {
    "logits1000": (logits_1000, r"output 'ids' is float32 \[1, 1000\]; segstream needs uint8 class ids"),
    "float_image": (float_image, r"output 'ids' is float32 \[\?, 3, \?, \?\]; segstream needs uint8"),
    "int64_ids": (lambda p: segmenter(p, cast=False), r"output 'ids' is int64 .*needs uint8 class ids"),
    "classes19": (lambda p: segmenter(p, 19), r"picks among 19 classes but its metadata lists 11"),
    "float_confidence": (float_confidence, r"output 'confidence' is float32 .*needs uint8 confidence"),
    "wrong_input_name": (wrong_input_name, r"no 'images' input \(inputs: input\)"),
    "extra_input": (extra_input, r"needs input\(s\) scale; segstream feeds only 'images'"),
    "fixed_size": (fixed_size_mismatch, r"takes 320x240 frames only but the metadata says input_size 64x48"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_model_fails_at_load_and_in_the_supervisor_probe(kind: str, tmp_path: Path) -> None:
    build, message = BROKEN[kind]
    path = build(tmp_path / f"{kind}.onnx")
    with pytest.raises(ModelFileError, match=message) as e:
        load(path, device="cpu")
    assert one_line(e).startswith(str(path))
    # the supervisor's probe reads the file without a session: the same fault, before any stage starts
    with pytest.raises(ModelFileError, match=message) as e:
        probe(path)
    assert one_line(e).startswith(str(path))


def test_contract_passes_a_minimal_segmenter_and_the_bundled_model(tmp_path: Path) -> None:
    """The checks must not reject what they should run (else every test above passes vacuously)."""
    rt = load(segmenter(tmp_path / "good.onnx"), device="cpu")
    frames = [RNG.integers(0, 255, (30 + i, 50, 3), np.uint8) for i in range(3)]
    pred = rt.predict(frames, full_size=True)
    assert [m.shape for m in pred.masks] == [(30, 50), (31, 50), (32, 50)]
    assert all(m.dtype == np.uint8 and m.max() < 11 for m in pred.masks)
    assert probe(tmp_path / "good.onnx")["max_batch"] == 4

    bundled = REPO / "stream" / "assets" / "default.onnx"
    g = read_graph(bundled)
    assert g.class_count() == 11  # the quick walk sees the exporter's classifier
    assert [o.name for o in g.outputs] == ["ids", "confidence"]
    rt = load(bundled, device="cpu", threads=1)
    ids, conf = rt.run(rt.prepare(frames[:2]), confidence=True)
    assert ids.shape == conf.shape == (2, 360, 480)


def test_class_count_the_quick_walk_cannot_see_is_found_by_shape_inference(tmp_path: Path) -> None:
    """Two transposes hide the classifier from the protobuf walk; ``load`` still finds 19 != 11."""
    nodes = [
        oh.make_node("Conv", ["images", "W"], ["logits"], kernel_shape=[1, 1]),
        oh.make_node("Transpose", ["logits"], ["nhwc"], perm=[0, 2, 3, 1]),
        oh.make_node("Transpose", ["nhwc"], ["nchw"], perm=[0, 3, 1, 2]),
        oh.make_node("ArgMax", ["nchw"], ["am"], axis=1, keepdims=0),
        oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
    ]
    path = save(tmp_path / "hidden19.onnx", nodes, [("ids", T.UINT8, None)], [weights("W", (19, 3, 1, 1))])
    assert read_graph(path).class_count() is None
    with pytest.raises(ModelFileError, match="picks among 19 classes but its metadata lists 11") as e:
        load(path, device="cpu")
    one_line(e)


def test_what_the_graph_really_returns_is_checked_at_load(tmp_path: Path) -> None:
    """Declarations can lie or be missing: a rank-1 'ids' declared N x H x W passes the supervisor's
    quick probe but not the backend's load, and ids beyond the class table fail on the test batch."""
    rank1 = [
        oh.make_node("Conv", ["images", "W"], ["logits"], kernel_shape=[1, 1]),
        oh.make_node("GlobalAveragePool", ["logits"], ["p"]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("ArgMax", ["f"], ["am"], axis=1, keepdims=0),
        oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
    ]
    declared = [("ids", T.UINT8, ["batch", "height", "width"])]
    graph = oh.make_graph(
        rank1,
        "rank1",
        [oh.make_tensor_value_info("images", T.FLOAT, DYN)],
        [oh.make_tensor_value_info(*declared[0])],
        initializer=[weights("W", (11, 3, 1, 1))],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=META_KEY, value=META.to_json())
    path = tmp_path / "rank1.onnx"
    onnx.save(model, str(path))
    assert probe(path)["backend"] == "onnxruntime"  # the declaration looks right
    with pytest.raises(ModelFileError, match=r"output 'ids' is uint8 \[\?\]; segstream needs uint8") as e:
        load(path, device="cpu")
    one_line(e)

    const200 = [  # no ArgMax at all: every pixel is class 200 of an 11-class table
        oh.make_node("ReduceMean", ["images"], ["m"], axes=[1], keepdims=0),
        oh.make_node("Mul", ["m", "zero"], ["z"]),
        oh.make_node("Add", ["z", "c200"], ["v"]),
        oh.make_node("Cast", ["v"], ["ids"], to=T.UINT8),
    ]
    inits = [nh.from_array(np.array(0, np.float32), "zero"), nh.from_array(np.array(200, np.float32), "c200")]
    path = save(tmp_path / "ids200.onnx", const200, [("ids", T.UINT8, ["batch", "height", "width"])], inits)
    with pytest.raises(ModelFileError, match="output class id 200; its metadata lists only 11 classes") as e:
        load(path, device="cpu")
    one_line(e)


def test_fixed_batch_graph_runs_with_smaller_and_larger_frame_counts(tmp_path: Path) -> None:
    """A graph exported for batch 2 only: the runtime never hands it more and pads fewer (it used to
    refuse every batch that was not exactly 2, e.g. a lone frame at the end of a clip)."""
    inputs = [oh.make_tensor_value_info("images", T.FLOAT, [2, 3, H, W])]
    nodes = [
        oh.make_node("Conv", ["images", "W"], ["logits"], kernel_shape=[1, 1]),
        oh.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
        oh.make_node("Cast", ["am"], ["ids"], to=T.UINT8),
    ]
    path = save(
        tmp_path / "batch2.onnx",
        nodes,
        [("ids", T.UINT8, [2, H, W])],
        [weights("W", (11, 3, 1, 1))],
        inputs=inputs,
    )
    rt = load(path, device="cpu")
    assert rt.max_batch == 2
    frames = [RNG.integers(0, 255, (H, W, 3), np.uint8) for _ in range(3)]
    ids, _ = rt.run(rt.prepare(frames[:1]))
    assert ids.shape == (1, H, W)
    pred = rt.predict(frames)  # a batch of 2, then 1 padded to 2
    assert len(pred.masks) == 3
    np.testing.assert_array_equal(pred.masks[0], ids[0])  # padding changes nothing about the real frame
    np.testing.assert_array_equal(pred.masks[2], rt.run(rt.prepare(frames[2:]))[0][0])


# -- files that are no model -----------------------------------------------------------------------------
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 8


def not_models(tmp: Path) -> dict[str, tuple[Path, str]]:
    import torch

    good = segmenter(tmp / "good-for-cutting.onnx").read_bytes()
    files = {
        "jpeg.onnx": (JPEG, r"not a loadable ONNX model: the file is a JPEG image"),
        "empty.onnx": (b"", r"not a loadable ONNX model: the file is empty \(0 bytes\)"),
        "truncated.onnx": (good[: len(good) // 2], r"not a loadable ONNX model \(truncated or corrupt\?"),
        "notes.onnx": (b"just some text\n" * 20, r"not a loadable ONNX model: the file is a text file"),
        "jpeg.pt": (JPEG, r"not a readable PyTorch checkpoint: the file is a JPEG image"),
        "empty.pt": (b"", r"not a readable PyTorch checkpoint: the file is empty"),
    }
    out = {}
    for name, (data, message) in files.items():
        (tmp / name).write_bytes(data)
        out[name] = (tmp / name, message)
    torch.save({"state_dict": {}}, tmp / "foreign.pt")
    out["foreign.pt"] = (tmp / "foreign.pt", r"not a segstream checkpoint \(format=None")
    torch.save(torch.nn.Linear(2, 2), tmp / "module.pt")
    out["module.pt"] = (tmp / "module.pt", r"not a segstream checkpoint \(format='Linear'")
    ckpt = tmp / "cut.pt"
    torch.save({"format": "segstream-checkpoint", "model": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:400])
    out["cut.pt"] = (ckpt, r"not a readable PyTorch checkpoint \(truncated or corrupt\?")
    return out


def test_files_that_are_no_model_are_one_clear_line(tmp_path: Path) -> None:
    for name, (path, message) in not_models(tmp_path).items():
        with pytest.raises(ModelFileError, match=message) as e:
            load(path, device="cpu")
        assert one_line(e).startswith(str(path)), name
        if name.endswith(".onnx"):
            with pytest.raises(ModelFileError, match=message.split(":")[0]):
                probe(path)


def test_checkpoint_whose_network_disagrees_with_its_class_table(tmp_path: Path) -> None:
    from engines.models import build_model
    from engines.runtime.torch import write_checkpoint

    meta = ModelMeta(arch="fastscnn", classes=META.classes, input_size=(W, H))
    path = write_checkpoint(tmp_path / "c19.pt", build_model("fastscnn", 19), meta, {"num_classes": 19})
    with pytest.raises(ModelFileError, match="network has 19 output classes but its metadata lists 11") as e:
        load(path, device="cpu")
    one_line(e)


# -- through the command line ------------------------------------------------------------------------------
CLI_CASES = {
    "logits1000.onnx": (logits_1000, "output 'ids' is float32 [1, 1000]"),
    "float_image.onnx": (float_image, "output 'ids' is float32 [?, 3, ?, ?]"),
    "classes19.onnx": (lambda p: segmenter(p, 19), "picks among 19 classes but its metadata lists 11"),
    "jpeg.onnx": (lambda p: p.write_bytes(JPEG), "the file is a JPEG image"),
    "empty.onnx": (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
    "truncated.onnx": (
        lambda p: p.write_bytes(segmenter(p).read_bytes()[:300]),
        "not a loadable ONNX model (truncated or corrupt?",
    ),
    "foreign.pt": (lambda p: __import__("torch").save({"weights": 1}, p), "not a segstream checkpoint"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CLI_CASES))
def test_segstream_run_with_a_bad_model_is_one_line_and_starts_no_stage(name: str, tmp_path: Path) -> None:
    build, message = CLI_CASES[name]
    model = tmp_path / name
    build(model)
    out = tmp_path / "out.mp4"
    r = run(
        "run", f"synthetic://?size={W}x{H}&fps=30&frames=20", "--model", model, "--sink", out,
        "--no-progress", timeout=100, cwd=tmp_path,
    )  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("segstream run: error: "), r.stderr
    assert str(model) in lines[0] and message in lines[0], lines[0]
    assert not out.exists()  # refused before the overlay stage (which creates the video) was started
    assert r.stdout == ""
