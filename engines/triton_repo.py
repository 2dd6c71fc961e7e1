"""A Triton Inference Server model repository for a segstream model.

Layout (Triton's documented one; `tritonserver --model-repository DIR` serves it)::

    DIR/NAME/config.pbtxt            model configuration (protobuf text format, ModelConfig)
    DIR/NAME/1/model.onnx            ONNX model -> onnxruntime backend
    DIR/NAME/1/model.plan            or a TensorRT plan (the segstream header removed) -> tensorrt backend
    DIR/NAME/segstream.meta.json     the model's metadata (classes, palette, normalization), for people

The metadata also goes into the config's ``parameters`` (key ``segstream.meta``), where a client reads it
with one gRPC call (engines/runtime/triton.py), so edge hosts need no model file. The inputs and outputs
are segstream's contract: ``images`` FP32 [C, H, W] (H, W -1 when dynamic; an RGB-D model: ``image``
FP32 [3, H, W] and ``depth`` FP32 [1, H, W]), ``ids`` UINT8 [H, W] and,
when present, ``confidence`` UINT8 [H, W]; the batch dimension is implicit (``max_batch_size``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engines.errors import SegstreamError
from engines.meta import META_KEY, ModelMeta


class TritonRepoError(SegstreamError):
    """The model cannot be written as a Triton repository (unknown kind, bad option, unwritable folder)."""


@dataclass
class RepoOptions:
    name: str = "segstream"
    instances: int = 1  # model instances per device (instance_group count)
    kind: str = "gpu"  # gpu | cpu (instance_group kind)
    gpus: list[int] | None = None  # which GPUs (None: all)
    max_batch: int | None = None  # None: the model's max batch (ONNX) or the plan's profile maximum
    queue_delay_us: int = 2000  # dynamic batching: how long a request may wait for others
    preferred_batch: list[int] | None = None  # None: the powers of two up to max_batch, from 2

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise TritonRepoError(f"model name {self.name!r}: use letters, digits, '_', '-' and '.' only")
        if self.kind not in ("gpu", "cpu"):
            raise TritonRepoError(f"instance kind {self.kind!r}: must be gpu or cpu")
        if self.instances < 1:
            raise TritonRepoError(f"instances {self.instances}: must be at least 1")
        if self.queue_delay_us < 0:
            raise TritonRepoError(f"queue delay {self.queue_delay_us} us: must not be negative")
        if self.max_batch is not None and self.max_batch < 1:
            raise TritonRepoError(f"max batch {self.max_batch}: must be at least 1")


def _q(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, quotes and backslashes escaped, every
    other byte of the UTF-8 encoding as an octal escape (text format has no \\u escape everywhere)."""
    out = []
    for b in text.encode("utf-8"):
        if b in (0x22, 0x5C):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return (
        f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
    )


def config_pbtxt(
    meta: ModelMeta,
    *,
    backend: str,
    dims_hw: tuple[int, int],
    outputs: list[str],
    max_batch: int,
    opts: RepoOptions,
) -> str:
    """The config.pbtxt text for a model with ``meta``: ``backend`` onnxruntime or tensorrt, ``dims_hw``
    (-1 where dynamic), ``outputs`` among ids/confidence."""
    h, w = dims_hw
    preferred = opts.preferred_batch or [b for b in (2, 4, 8, 16, 32, 64) if b <= max_batch] or [max_batch]
    platform = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[backend]
    filename = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}[backend]
    gpus = f"\n    gpus: [ {', '.join(map(str, opts.gpus))} ]" if opts.gpus and opts.kind == "gpu" else ""
    outs = ",\n".join(_tensor(o, "TYPE_UINT8", [h, w]) for o in outputs)
    # 'images', or an RGB-D model's 'image' and 'depth' (engines.runtime.inputs)
    from engines.runtime.inputs import file_layout

    ins = ",\n".join(_tensor(n, "TYPE_FP32", [c, h, w]) for n, c in file_layout(meta))
    return (
        f'name: "{opts.name}"\n'
        f'backend: "{backend}"\n'
        f'platform: "{platform}"\n'
        f'default_model_filename: "{filename}"\n'
        f"max_batch_size: {max_batch}\n"
        f"input [\n{ins}\n]\n"
        f"output [\n{outs}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {opts.queue_delay_us}\n"
        "}\n"
        "instance_group [\n  {\n"
        f"    count: {opts.instances}\n    kind: KIND_{opts.kind.upper()}{gpus}\n"
        "  }\n]\n"
        "parameters {\n"
        f'  key: "{META_KEY}"\n'
        f"  value {{ string_value: {_q(meta.to_json())} }}\n"
        "}\n"
    )


def _onnx_facts(path: Path) -> tuple[ModelMeta, tuple[int, int], list[str]]:
    from engines.runtime.probe import probe

    info = probe(path)  # metadata + the I/O contract, from the file alone
    meta = ModelMeta.from_json(info["meta"])
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    images = next(i for i in model.graph.input if i.name in ("images", "image"))
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in images.type.tensor_type.shape.dim]
    hw = (dims[2] or -1, dims[3] or -1) if len(dims) == 4 else (-1, -1)
    outputs = [o.name for o in model.graph.output if o.name in ("ids", "confidence")]
    return meta, hw, outputs


def write_repo(model: str | Path, repo: str | Path, opts: RepoOptions | None = None) -> Path:
    """Write ``repo/NAME/`` for an ONNX model or a segstream TensorRT engine; returns the model folder."""
    opts = opts or RepoOptions()
    opts.validate()
    model, repo = Path(model), Path(repo)
    if not model.is_file():
        raise TritonRepoError(f"model file not found: {model}")
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        meta, hw, outputs = _onnx_facts(model)
        backend, max_batch, plan = "onnxruntime", opts.max_batch or meta.max_batch, None
    elif suffix in (".engine", ".plan"):
        from engines.build import read_engine

        header, plan = read_engine(model)  # Triton's tensorrt backend takes the bare plan
        meta = header.meta
        p = header.profile
        hw = (p.max[1] if p.min[1] == p.max[1] else -1, p.max[2] if p.min[2] == p.max[2] else -1)
        outputs = ["ids", "confidence"]
        backend, max_batch = "tensorrt", min(opts.max_batch or p.max[0], p.max[0])
    else:
        raise TritonRepoError(f"{model}: a Triton repository takes an .onnx model or an .engine/.plan")
    folder = repo / opts.name
    try:
        if folder.exists():
            shutil.rmtree(folder)  # a repository folder is ours to rewrite as a whole
        (folder / "1").mkdir(parents=True)
        if plan is None:
            shutil.copyfile(model, folder / "1" / "model.onnx")
        else:
            (folder / "1" / "model.plan").write_bytes(plan)
        text = config_pbtxt(
            meta, backend=backend, dims_hw=hw, outputs=outputs, max_batch=max_batch, opts=opts
        )
        (folder / "config.pbtxt").write_text(text)
        (folder / "segstream.meta.json").write_text(json.dumps(json.loads(meta.to_json()), indent=2) + "\n")
    except OSError as e:
        raise TritonRepoError(f"cannot write the repository in {repo} ({e.strerror or e})") from None
    return folder
