"""engines.runtime.head: the graph's upsample + argmax head done in OpenCV gives the graph's own ids.

On the bundled model and the real CamVid fixture frames (plus frames of the bundled clip) the ONNX
Runtime backend's ids, computed through the cut head, are the ids of the graph's own head; only a head
of exactly the supported form is cut, ties keep the first class as ONNX ArgMax does, and a head whose
target is not an upsampling falls back to the graph.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.runtime import head
from engines.runtime.base import ModelFileError
from engines.runtime.contract import read_graph
from engines.runtime.prune import keep_outputs

ASSETS = Path(__file__).resolve().parents[2] / "stream" / "assets"
MODEL = ASSETS / "default.onnx"


def _session(data: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _frames(camvid: Path, sample_clip) -> list[np.ndarray]:
    frames = [cv2.imread(str(p)) for p in sorted(camvid.glob("*/images/*.jpg"))]
    cap = cv2.VideoCapture(str(sample_clip.path))
    for i in range(sample_clip.frames):
        ok, f = cap.read()
        assert ok
        if i % 40 == 0:
            frames.append(f)
    cap.release()
    assert len(frames) >= 20 and all(f is not None for f in frames)
    return frames


def test_runtime_ids_through_the_cut_head_are_the_graphs_own(camvid: Path, sample_clip) -> None:
    from engines.runtime import load

    rt = load(MODEL, device="cpu", threads=1)
    assert rt._head is not None  # the bundled model's head is the supported form: it is cut
    assert "ids" not in [o.name for o in rt.session.get_outputs()]  # the frame session stops before it
    graph_ids = _session(keep_outputs(MODEL.read_bytes(), ["ids"]))
    total = differ = 0
    classes = set()
    for frame in _frames(camvid, sample_clip):
        x = rt.prepare([frame])
        ids, conf = rt.run(x)
        (want,) = graph_ids.run(None, {"images": x})
        assert conf is None and ids.dtype == np.uint8 and ids.shape == want.shape == (1, 360, 480)
        total += ids.size
        differ += int((ids != want).sum())
        classes |= set(np.unique(want).tolist())
    assert len(classes) >= 6  # real scenes: many classes, many boundaries
    # the same interpolation in two libraries: 0 of ~5 M pixels differed when this was written; an
    # exact tie could still round apart, hence 1 in 10,000
    assert differ <= total // 10_000, f"{differ} of {total} pixels differ from the graph's ids"
    # a batch of several frames too, and confidence (the whole graph) agrees with the cut path
    frames = _frames(camvid, sample_clip)[:4]
    batch = rt.prepare(frames)
    ids, _ = rt.run(batch)
    ids2, conf = rt.run(batch, confidence=True)
    assert conf is not None and (ids == ids2).mean() >= 0.9999
    rt.close()


def _model(
    mode: str = "linear",
    ctm: str = "half_pixel",
    axis: int = 1,
    keepdims: int = 0,
    to: int = TensorProto.UINT8,
    factor: float = 4,
    scales_form: bool = False,
    last_index: int | None = None,
) -> bytes:
    """images (1x3x8x8) -> 1x1 conv to 3 classes (logits) -> Resize x``factor`` -> ArgMax -> Cast -> ids.
    The target size is computed from the input's shape, as exported models do."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(3, 3, 1, 1)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "k")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["logits"]),
        helper.make_node("Shape", ["logits"], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["shape_f", "k"], ["size_f"]),
        helper.make_node("Cast", ["size_f"], ["sizes"], to=TensorProto.INT64),
    ]
    inputs = ["logits", "", "k", ""] if scales_form else ["logits", "", "", "sizes"]
    nodes.append(helper.make_node("Resize", inputs, ["up"], mode=mode, coordinate_transformation_mode=ctm))
    extra = {} if last_index is None else {"select_last_index": last_index}
    nodes.append(helper.make_node("ArgMax", ["up"], ["a"], axis=axis, keepdims=keepdims, **extra))
    nodes.append(helper.make_node("Cast", ["a"], ["ids"], to=to))
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("ids", to, None)],
        [w, k],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_find_takes_exactly_the_supported_head() -> None:
    found = head.find(read_graph("tail.onnx", _model()))
    assert found == head.Head(logits="logits", sizes="sizes")
    for other in (
        _model(mode="nearest"),
        _model(mode="cubic"),
        _model(ctm="align_corners"),
        _model(ctm="asymmetric"),
        _model(axis=2),
        _model(keepdims=1),
        _model(to=TensorProto.INT32),
        _model(scales_form=True),
        _model(last_index=1),
    ):
        assert head.find(read_graph("other.onnx", other)) is None
    with pytest.raises(ModelFileError):  # no graph to look at: the runtime then cuts no head
        read_graph("garbage.onnx", b"not a model")


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_cut_head_equals_onnx_runtimes_resize_and_argmax(factor: int) -> None:
    data = _model(factor=factor)
    found = head.find(read_graph("tail.onnx", data))
    cut = _session(keep_outputs(data, [found.logits, found.sizes]))
    whole = _session(data)
    rng = np.random.default_rng(factor)
    for _ in range(20):
        x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
        logits, sizes = cut.run(None, {"images": x})
        (want,) = whole.run(None, {"images": x})
        got = head.argmax_upsampled(logits, sizes)
        assert got.shape == want.shape == (1, 8 * factor, 8 * factor)
        assert np.array_equal(got, want.astype(np.uint8))


def test_ties_keep_the_first_class_and_non_upsampling_is_refused() -> None:
    logits = np.zeros((2, 4, 3, 5), np.float32)  # all equal: ONNX ArgMax says class 0
    logits[1, 2] = 1.0
    logits[1, 3] = 1.0  # classes 2 and 3 tie for the maximum: the first, 2
    ids = head.argmax_upsampled(logits, np.array([2, 4, 6, 10]))
    assert ids.shape == (2, 6, 10) and (ids[0] == 0).all() and (ids[1] == 2).all()
    assert head.argmax_upsampled(logits, np.array([2, 4, 2, 10])) is None  # smaller than the logits
    assert head.argmax_upsampled(logits, np.array([1, 4, 6, 10])) is None  # another batch
    assert head.argmax_upsampled(logits, np.array([2, 5, 6, 10])) is None  # other classes


def test_identity_resize_agrees_and_a_smaller_target_is_refused() -> None:
    """Factor 1 (the target is the logits' own size) still equals the graph; a target smaller than the
    logits is not what OpenCV's upsampling reproduces, so it is refused (the runtime then takes the
    graph's own ids)."""
    data = _model(factor=1)
    found = head.find(read_graph("tail.onnx", data))
    cut = _session(keep_outputs(data, [found.logits, found.sizes]))
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    logits, sizes = cut.run(None, {"images": x})
    assert np.array_equal(head.argmax_upsampled(logits, sizes), _session(data).run(None, {"images": x})[0])
    smaller = sizes.copy()
    smaller[2:] = sizes[2:] // 2
    assert head.argmax_upsampled(logits, smaller) is None


def _segstream_model(tmp_path: Path, factor: float) -> Path:
    """The tiny head model with dynamic N/H/W and segstream metadata (3 classes), loadable by the runtime."""
    import json

    import onnx

    props = _session(MODEL.read_bytes()).get_modelmeta().custom_metadata_map
    meta = json.loads(props["segstream.meta"])
    meta["classes"] = {
        "ignore_index": 3,
        "names": ["a", "b", "c"],
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    }
    meta["input_size"] = [16, 16]
    m = onnx.load_from_string(_model(factor=factor))
    for i, name in ((0, "n"), (2, "h"), (3, "w")):
        m.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    helper.set_model_props(m, {"segstream.meta": json.dumps(meta)})
    path = tmp_path / f"tiny-{factor}.onnx"
    onnx.save(m, str(path))
    return path


def test_runtime_uses_the_cut_head_and_falls_back_when_the_head_downsamples(tmp_path: Path) -> None:
    from engines.runtime import load

    frames = [np.random.default_rng(i).integers(0, 255, (16, 16, 3), np.uint8) for i in range(3)]
    for factor, cut in ((4, True), (0.5, False)):
        path = _segstream_model(tmp_path, factor)
        whole = _session(path.read_bytes())
        rt = load(path, device="cpu", threads=1)
        for frame in frames:
            x = rt.prepare([frame])
            ids, _ = rt.run(x)
            (want,) = whole.run(None, {"images": x})
            assert np.array_equal(ids, want)
        # an upsampling head stays cut; a downsampling one is dropped on the first frame for good
        assert (rt._head is not None) is cut
        rt.close()
