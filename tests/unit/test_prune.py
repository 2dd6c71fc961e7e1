"""engines.runtime.prune: the default session runs the graph without what only 'confidence' needs.

On the bundled model and real frames the pruned graph gives the very ids of the whole graph, has none of
the confidence nodes, and the ONNX Runtime backend still answers confidence (from the whole graph) when
asked. Graphs the byte rewrite must not cut (subgraphs, external weights, nothing to drop, garbage) are
left alone, and a graph whose initializers double as inputs (IR 3 style) loads cleanly once cut.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.runtime.prune import keep_outputs

ASSETS = Path(__file__).resolve().parents[2] / "stream" / "assets"
MODEL = ASSETS / "default.onnx"


def _session(data: bytes | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _frames(sample_clip, count: int = 4) -> np.ndarray:
    from engines.runtime import load

    cap = cv2.VideoCapture(str(sample_clip.path))
    frames = []
    while len(frames) < count:
        ok, f = cap.read()
        assert ok, "the sample clip has fewer frames than the test reads"
        frames.append(f)
        for _ in range(30):  # frames a second apart: different scenes
            cap.grab()
    cap.release()
    rt = load(MODEL, device="cpu", threads=1)
    batch = rt.prepare(frames)
    rt.close()
    return np.asarray(batch, np.float32)


def test_default_model_pruned_gives_the_same_ids_and_drops_the_confidence_nodes(sample_clip) -> None:
    data = MODEL.read_bytes()
    cut = keep_outputs(data, ["ids"])
    assert cut is not None and len(cut) < len(data)
    whole, pruned = onnx.load_from_string(data), onnx.load_from_string(cut)
    onnx.checker.check_model(pruned)
    assert [o.name for o in pruned.graph.output] == ["ids"]
    # exactly the softmax maximum behind confidence is gone; everything ids needs stays
    gone = {(n.name, n.op_type) for n in whole.graph.node} - {(n.name, n.op_type) for n in pruned.graph.node}
    assert {op for _, op in gone} >= {"ReduceMax", "Sub", "Exp", "ReduceSum", "Reciprocal", "Clip"}
    assert len(gone) == len(whole.graph.node) - len(pruned.graph.node) <= 12
    assert "ArgMax" in [n.op_type for n in pruned.graph.node]
    # the weights are the same bytes, less any only confidence used
    kept = {i.name for i in pruned.graph.initializer}
    assert kept and kept <= {i.name for i in whole.graph.initializer}
    x = _frames(sample_clip)
    a, b = _session(data), _session(cut)
    for i in range(len(x)):
        ids_whole = a.run(["ids"], {"images": x[i : i + 1]})[0]
        (ids_cut,) = b.run(None, {"images": x[i : i + 1]})
        assert ids_cut.dtype == np.uint8 and len(np.unique(ids_cut)) > 2  # a real scene, many classes
        assert np.array_equal(ids_whole, ids_cut)


def test_runtime_runs_pruned_by_default_and_the_whole_graph_for_confidence(sample_clip) -> None:
    from engines.runtime import load

    rt = load(MODEL, device="cpu", threads=1)
    # the frame session computes neither confidence nor (on the CPU) the argmax head: tests/unit/test_head.py
    assert "confidence" not in [o.name for o in rt.session.get_outputs()]
    assert rt.has_confidence
    x = _frames(sample_clip, 2)
    plain = _session(str(MODEL))
    ids, conf = rt.run(x, confidence=False)
    assert conf is None
    want_ids, want_conf = plain.run(["ids", "confidence"], {"images": x})
    assert np.array_equal(ids, want_ids)
    ids2, conf2 = rt.run(x, confidence=True)
    assert np.array_equal(ids2, want_ids) and np.array_equal(conf2, want_conf)
    rt.close()


def _tiny(opset: int = 17, ir3_inputs: bool = False) -> onnx.ModelProto:
    """images -> Conv -> (ArgMax -> ids, ReduceMax -> confidence), plus a weight only confidence uses."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    scale = numpy_helper.from_array(np.array([0.5], np.float32), "scale")  # only confidence reads it
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["a"], axis=1, keepdims=0),
        helper.make_node("Cast", ["a"], ["ids"], to=TensorProto.UINT8),
        helper.make_node("ReduceMax", ["logits"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "scale"], ["ms"]),
        helper.make_node("Cast", ["ms"], ["confidence"], to=TensorProto.UINT8),
    ]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])]
    if ir3_inputs:  # old exporters list every initializer as a graph input too
        inputs += [
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        [
            helper.make_tensor_value_info("ids", TensorProto.UINT8, [1, 4, 4]),
            helper.make_tensor_value_info("confidence", TensorProto.UINT8, [1, 4, 4]),
        ],
        [w, scale],
        value_info=[helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 4, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("ir3_inputs", [False, True])
def test_cut_drops_unused_weights_inputs_and_value_infos(ir3_inputs: bool) -> None:
    model = _tiny(ir3_inputs=ir3_inputs)
    cut = onnx.load_from_string(keep_outputs(model.SerializeToString(), ["ids"]))
    onnx.checker.check_model(cut)
    assert [n.op_type for n in cut.graph.node] == ["Conv", "ArgMax", "Cast"]
    assert [i.name for i in cut.graph.initializer] == ["w"]
    assert [i.name for i in cut.graph.input] == (["images", "w"] if ir3_inputs else ["images"])
    assert list(cut.graph.value_info) == []
    x = np.random.default_rng(0).random((1, 3, 4, 4), np.float32)
    got = _session(cut.SerializeToString()).run(None, {"images": x})
    assert len(got) == 1
    assert np.array_equal(got[0], _session(model.SerializeToString()).run(["ids"], {"images": x})[0])


def test_graphs_that_must_not_be_cut_are_left_alone(tmp_path: Path) -> None:
    data = _tiny().SerializeToString()
    assert keep_outputs(data, ["ids", "confidence"]) is None  # nothing to drop
    assert keep_outputs(data, ["ids", "nope"]) is None  # an output the graph does not have
    assert keep_outputs(data, []) is None
    assert keep_outputs(b"\xff\xd8\xff\xe0 not a model", ["ids"]) is None
    assert keep_outputs(data[: len(data) // 2], ["ids"]) is None  # truncated file
    # a subgraph may read any name of the outer graph: no cut
    model = _tiny()
    then = helper.make_graph(
        [helper.make_node("Identity", ["scale"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    model.graph.initializer.append(cond)
    model.graph.node.append(helper.make_node("If", ["cond"], ["iff"], then_branch=then, else_branch=then))
    model.graph.output.append(helper.make_tensor_value_info("iff", TensorProto.FLOAT, [1]))
    assert keep_outputs(model.SerializeToString(), ["ids"]) is None
    # weights in an external file are found relative to the model's path, which bytes do not have
    model = _tiny()
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0)
    assert keep_outputs((tmp_path / "m.onnx").read_bytes(), ["ids"]) is None
