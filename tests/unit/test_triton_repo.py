"""`segstream export --triton-repo`: the repository layout and config.pbtxt, parsed with Triton's own
ModelConfig protobuf (tritonclient ships model_config_pb2), so a field name, enum or nesting that Triton
would reject fails here."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from engines.meta import ClassTable, ModelMeta
from engines.triton_repo import RepoOptions, TritonRepoError, config_pbtxt, write_repo
from tests.procs import run

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
from google.protobuf import text_format  # noqa: E402 - after the skip: protobuf comes with tritonclient


def parse(text: str):
    return text_format.Parse(text, mc.ModelConfig())


def test_onnx_repository_is_a_valid_triton_config(onnx_model, tmp_path):
    folder = write_repo(
        onnx_model, tmp_path / "repo", RepoOptions(name="fastscnn", instances=2, queue_delay_us=500)
    )
    assert folder == tmp_path / "repo" / "fastscnn"
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    c = parse((folder / "config.pbtxt").read_text())
    assert (c.name, c.backend, c.platform, c.default_model_filename) == (
        "fastscnn", "onnxruntime", "onnxruntime_onnx", "model.onnx"
    )  # fmt: skip
    assert c.max_batch_size == 4  # the fixture model's max batch
    [inp] = c.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", mc.DataType.TYPE_FP32, [3, -1, -1])
    assert {o.name: (o.data_type, list(o.dims)) for o in c.output} == {
        "ids": (mc.DataType.TYPE_UINT8, [-1, -1]),
        "confidence": (mc.DataType.TYPE_UINT8, [-1, -1]),
    }
    assert c.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(c.dynamic_batching.preferred_batch_size) == [2, 4]
    [group] = c.instance_group
    assert (group.count, group.kind) == (2, mc.ModelInstanceGroup.Kind.KIND_GPU)
    from engines.runtime import load

    meta = load(onnx_model, device="cpu").meta
    assert ModelMeta.from_json(c.parameters["segstream.meta"].string_value) == meta
    assert ModelMeta.from_json((folder / "segstream.meta.json").read_text()) == meta


def test_metadata_with_any_characters_survives_the_text_format():
    names = ('Straße "B1"', "back\\slash", "new\nline", "车")
    meta = ModelMeta(
        arch="x",
        classes=ClassTable(names=names, palette=((1, 2, 3),) * 4),
        input_size=(320, 240),
        max_batch=2,
    )
    text = config_pbtxt(
        meta, backend="onnxruntime", dims_hw=(240, 320), outputs=["ids"], max_batch=2,
        opts=RepoOptions(kind="cpu", gpus=[0, 1]),
    )  # fmt: skip
    c = parse(text)
    assert ModelMeta.from_json(c.parameters["segstream.meta"].string_value).classes.names == names
    assert list(c.input[0].dims) == [3, 240, 320] and [o.name for o in c.output] == ["ids"]
    assert c.instance_group[0].kind == mc.ModelInstanceGroup.Kind.KIND_CPU
    assert not c.instance_group[0].gpus  # GPU ids mean nothing for CPU instances


def test_tensorrt_engine_becomes_a_bare_plan(tmp_path):
    """Triton's tensorrt backend loads the plan itself: segstream's header must be stripped, and the
    profile gives the batch limit and which dimensions are dynamic."""
    from engines.build import EngineHeader, Profile, write_engine

    meta = ModelMeta(arch="x", classes=ClassTable(("a", "b"), ((0, 0, 0), (9, 9, 9))), input_size=(480, 360))
    header = EngineHeader(
        meta=meta, trt_flavour="tensorrt", trt_version="10.0", precision="fp16",
        profile=Profile((1, 360, 480), (4, 360, 480), (16, 360, 480)),
    )  # fmt: skip
    engine = tmp_path / "m.engine"
    write_engine(engine, header, b"\x00PLAN-BYTES\xff")
    folder = write_repo(engine, tmp_path / "repo", RepoOptions(max_batch=64))
    assert (folder / "1" / "model.plan").read_bytes() == b"\x00PLAN-BYTES\xff"
    c = parse((folder / "config.pbtxt").read_text())
    assert (c.backend, c.platform, c.default_model_filename) == ("tensorrt", "tensorrt_plan", "model.plan")
    assert c.max_batch_size == 16  # never beyond the profile, whatever was asked
    assert list(c.input[0].dims) == [3, 360, 480]
    assert ModelMeta.from_json(c.parameters["segstream.meta"].string_value) == replace(meta)


def test_bad_options_and_inputs(tmp_path, onnx_model):
    with pytest.raises(TritonRepoError, match="model name"):
        write_repo(onnx_model, tmp_path, RepoOptions(name="a/b"))
    with pytest.raises(TritonRepoError, match="instance kind"):
        write_repo(onnx_model, tmp_path, RepoOptions(kind="tpu"))
    with pytest.raises(TritonRepoError, match="not found"):
        write_repo(tmp_path / "none.onnx", tmp_path)
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(TritonRepoError, match="takes an .onnx model"):
        write_repo(tmp_path / "m.pt", tmp_path)


def test_export_command_writes_the_repository(tmp_path, onnx_model):
    r = run(
        "export", onnx_model, "--triton-repo", tmp_path / "repo", "--triton-kind", "cpu",
        "--triton-queue-delay-us", "100", timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    c = parse((tmp_path / "repo" / "segstream" / "config.pbtxt").read_text())
    assert c.instance_group[0].kind == mc.ModelInstanceGroup.Kind.KIND_CPU
    assert c.dynamic_batching.max_queue_delay_microseconds == 100
    assert "tritonserver --model-repository" in r.stdout
    bad = run(
        "export", onnx_model, "--triton-repo", tmp_path / "r2", "--triton-name", "no/slash", timeout=120
    )
    assert bad.returncode == 2 and "model name" in bad.stderr and "Traceback" not in bad.stderr
    assert json.loads((tmp_path / "repo" / "segstream" / "segstream.meta.json").read_text())["max_batch"] == 4
