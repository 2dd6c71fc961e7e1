"""ONNX -> TensorRT engine file (FP32 / FP16 / INT8 from Q/DQ), with segstream's header in front.

Engine file layout: MAGIC (8 bytes) + uint64 little-endian header length + header JSON + TensorRT plan.
The header carries the model's ModelMeta, the TensorRT flavour and version that built the plan, the
GPU it was built on (when one was visible), the precision, the optimization profile and the exact
command that rebuilds it — so a mismatched engine is refused with a message, before TensorRT ever
sees (and possibly crashes on) a plan it cannot run.
"""

from __future__ import annotations

import json
import shlex
import struct
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from engines.errors import SegstreamError
from engines.export import ExportError, get_meta, is_fp16, load_onnx, to_fp16
from engines.meta import MetadataError, ModelMeta
from engines.runtime.base import ModelFileError, ShapeError

MAGIC = b"SEGSTRT\x01"
HEADER_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
# TensorRT-RTX runs on these compute capabilities only (RTX-class GPUs)
RTX_CAPABILITIES = ("7.5", "8.6", "8.9", "12.0", "12.1")


class EngineBuildError(SegstreamError):
    """The engine could not be built from this model with these settings."""


class EngineMismatch(ModelFileError):
    """The engine was built by another TensorRT version or for another GPU."""


Shape = tuple[int, int, int]  # N, H, W


def parse_shape(text: str) -> Shape:
    """'4x360x480' (N x H x W) -> (4, 360, 480)."""
    try:
        n, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EngineBuildError(f"shape '{text}' is not NxHxW (e.g. 1x360x480)") from None
    if min(n, h, w) < 1:
        raise EngineBuildError(f"shape '{text}' has a non-positive dimension")
    return n, h, w


def fmt_shape(s: Shape) -> str:
    return "x".join(str(v) for v in s)


@dataclass(frozen=True)
class Profile:
    """Optimization profile of the model's inputs: min/opt/max of batch, height and width."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for i, dim in enumerate("NHW"):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise EngineBuildError(
                    f"profile {dim}: need min <= opt <= max, got {self.min[i]}, {self.opt[i]}, {self.max[i]}"
                )

    def contains(self, s: Shape) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, s, self.max, strict=True))

    def describe(self) -> str:
        return f"min {fmt_shape(self.min)}, opt {fmt_shape(self.opt)}, max {fmt_shape(self.max)} (NxHxW)"

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    @classmethod
    def default(cls, meta: ModelMeta) -> Profile:
        w, h = meta.input_size
        return cls((1, h, w), (1, h, w), (max(1, meta.max_batch), h, w))


@dataclass
class EngineHeader:
    meta: ModelMeta
    trt_flavour: str
    trt_version: str
    precision: str
    profile: Profile
    gpu: dict[str, str] | None = None  # {"name", "compute_capability"} of the GPU it was built on
    build_command: str = ""
    built_at: str = ""
    header_version: int = HEADER_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["meta"] = json.loads(self.meta.to_json())
        d["profile"] = self.profile.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes) -> EngineHeader:
        d = json.loads(text)
        return cls(
            meta=ModelMeta.from_json(json.dumps(d["meta"])),
            trt_flavour=str(d["trt_flavour"]),
            trt_version=str(d["trt_version"]),
            precision=str(d["precision"]),
            profile=Profile.from_dict(d["profile"]),
            gpu=d.get("gpu"),
            build_command=str(d.get("build_command", "")),
            built_at=str(d.get("built_at", "")),
            header_version=int(d.get("header_version", HEADER_VERSION)),
        )


def write_engine(path: str | Path, header: EngineHeader, plan: bytes | memoryview) -> int:
    blob = header.to_json().encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.write(plan)
    return path.stat().st_size


def read_engine_header(path: str | Path) -> tuple[EngineHeader, int]:
    """(header, byte offset of the plan); ModelFileError for anything that is not our engine file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"engine file not found: {path}")
    with path.open("rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
            raise ModelFileError(
                f"{path}: not a segstream engine (no segstream header; bare TensorRT plans are not "
                "accepted because their version cannot be checked before loading) — build it with "
                "`segstream build-engine MODEL.onnx -o ENGINE`"
            )
        (n,) = struct.unpack("<Q", head[len(MAGIC) :])
        size = path.stat().st_size
        if n > size - len(head):
            raise ModelFileError(
                f"{path}: engine header claims {n} bytes but the file has {size} (truncated?)"
            )
        blob = f.read(n)
    try:
        header = EngineHeader.from_json(blob)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, MetadataError, SegstreamError) as e:
        raise ModelFileError(f"{path}: engine header is corrupt ({type(e).__name__}: {e})") from None
    offset = len(head) + n
    if offset >= size:
        raise ModelFileError(f"{path}: engine file holds a header but no TensorRT plan (truncated?)")
    return header, offset


def read_engine(path: str | Path) -> tuple[EngineHeader, bytes]:
    header, offset = read_engine_header(path)
    with Path(path).open("rb") as f:
        f.seek(offset)
        return header, f.read()


def gpu_info() -> dict[str, str] | None:
    """Name and compute capability of CUDA device 0, from torch or nvidia-smi; None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, _, cap = out.stdout.strip().splitlines()[0].rpartition(",")
    return {"name": name.strip(), "compute_capability": cap.strip()}


def check_compatible(
    header: EngineHeader, trt_flavour: str, trt_version: str, gpu: dict | None, path: Path
) -> None:
    """EngineMismatch when this engine cannot run on this TensorRT/GPU, with the command that rebuilds it."""
    rebuild = header.build_command or "segstream build-engine MODEL.onnx -o " + str(path)
    built_by = f"{header.trt_flavour} {header.trt_version}"
    if (header.trt_flavour, header.trt_version) != (trt_flavour, trt_version):
        raise EngineMismatch(
            f"{path} was built by {built_by} but this machine has {trt_flavour} {trt_version}; an engine "
            f"only loads in the TensorRT that built it. Rebuild here: {rebuild}"
        )
    if gpu is None:
        return
    cap = gpu.get("compute_capability", "")
    if header.trt_flavour == "tensorrt_rtx" and cap and cap not in RTX_CAPABILITIES:
        raise EngineMismatch(
            f"{path} is a TensorRT-RTX engine, which runs only on RTX-class GPUs (compute capability "
            f"{', '.join(RTX_CAPABILITIES)}); this GPU is {gpu.get('name')} ({cap}). Install full TensorRT "
            f"(pip install 'segstream[tensorrt]') and rebuild: {rebuild}"
        )
    built_on = header.gpu or {}
    if built_on.get("compute_capability") and cap and built_on["compute_capability"] != cap:
        raise EngineMismatch(
            f"{path} was built for {built_on.get('name')} "
            f"(compute capability {built_on['compute_capability']}) "
            f"but this GPU is {gpu.get('name')} ({cap}). Rebuild here: {rebuild}"
        )


# ---------------------------------------------------------------- build


@dataclass
class BuildReport:
    path: Path
    header: EngineHeader
    seconds: float
    size_bytes: int
    timing_cache: Path | None
    notices: list[str] = field(default_factory=list)


def model_precision(model: onnx.ModelProto) -> str:
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    return "fp16" if is_fp16(model) else "fp32"


def _input_dims(model: onnx.ModelProto, meta: ModelMeta) -> dict[str, list[int | None]]:
    """Dims of every input the model declares ('images', or an RGB-D model's 'image' and 'depth')."""
    from engines.runtime.inputs import file_layout

    dims = {}
    for name, _ in file_layout(meta):
        inp = next((i for i in model.graph.input if i.name == name), None)
        if inp is None:
            raise EngineBuildError(
                f"the ONNX model has no '{name}' input (export it with `segstream export`)"
            )
        dims[name] = [
            d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim
        ]
    return dims


def rebuild_command(
    onnx_path: Path, engine_path: Path, precision: str, profile: Profile, workspace_mb: int | None
) -> str:
    args = [
        "segstream",
        "build-engine",
        str(onnx_path),
        "-o",
        str(engine_path),
        "--precision",
        precision,
        "--min-shape",
        fmt_shape(profile.min),
        "--opt-shape",
        fmt_shape(profile.opt),
        "--max-shape",
        fmt_shape(profile.max),
    ]
    if workspace_mb:
        args += ["--workspace", str(workspace_mb)]
    return shlex.join(args)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    profile: Profile | None = None,
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    verbose: bool = False,
    flavour: str | None = None,
) -> BuildReport:
    """Build ``engine_path`` from an exported (or quantized) segstream ONNX model."""
    from engines.trt_compat import capturing_logger, load_trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    try:
        model = load_onnx(onnx_path)
        meta = get_meta(model, onnx_path)
    except ExportError as e:
        raise EngineBuildError(str(e)) from None
    trt = load_trt(flavour)
    notices: list[str] = []

    have = model_precision(model)
    if precision == "int8" and have != "int8":
        raise EngineBuildError(
            f"{onnx_path} has no Q/DQ nodes: INT8 needs a quantized model "
            f"(segstream quantize {onnx_path} --calib IMAGES -o MODEL.int8.onnx)"
        )
    if precision != "int8" and have == "int8":
        notices.append(f"{onnx_path.name} is a Q/DQ model: its quantized layers build as INT8")
    if trt.strongly_typed:  # precision must already be in the ONNX types
        if precision == "fp16" and have == "fp32":
            model = to_fp16(model)
            notices.append(f"{trt.label} is strongly typed: converted the model to FP16 before building")
        elif precision == "fp32" and have == "fp16":
            raise EngineBuildError(
                f"{onnx_path} is an FP16 model and {trt.label} builds what the model's types say; "
                "export without --fp16 for an FP32 engine"
            )

    all_dims = _input_dims(model, meta)
    dims = next(iter(all_dims.values()))  # the inputs share N, H and W (the first one tells)
    profile = profile or Profile.default(meta)
    for i, dim in ((2, "H"), (3, "W")):
        fixed = dims[i] if len(dims) > i else None
        if fixed and not (profile.min[i - 1] == profile.max[i - 1] == fixed):
            raise EngineBuildError(
                f"{onnx_path} has a fixed {dim} of {fixed} (exported with fixed H/W); the profile asks for "
                f"{profile.min[i - 1]}..{profile.max[i - 1]}. Use {fixed} or re-export with dynamic H/W"
            )
    if dims and dims[0] and not (profile.min[0] == profile.max[0] == dims[0]):
        raise EngineBuildError(f"{onnx_path} has a fixed batch of {dims[0]}; the profile asks for another")

    mod = trt.module
    log = capturing_logger(trt, verbose)
    builder = mod.Builder(log)
    flags = 0
    if trt.flavour == "tensorrt" and int(trt.version.split(".")[0]) < 10:
        flags = 1 << int(mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = mod.OnnxParser(network, log)
    if not parser.parse(model.SerializeToString()):
        errs = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineBuildError(f"{trt.label} cannot parse {onnx_path}: {errs[:400]}")

    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(mod.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not trt.strongly_typed:
        if precision in ("fp16", "int8"):
            config.set_flag(mod.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(mod.BuilderFlag.INT8)
    # one profile, the same N x H x W range for every input (an RGB-D model's image and depth)
    prof = builder.create_optimization_profile()
    for name, d in all_dims.items():
        c = d[1] if len(d) > 1 and d[1] else meta.channels
        prof.set_shape(
            name,
            (profile.min[0], c, *profile.min[1:]),
            (profile.opt[0], c, *profile.opt[1:]),
            (profile.max[0], c, *profile.max[1:]),
        )
    config.add_optimization_profile(prof)

    cache_path = Path(timing_cache) if timing_cache else engine_path.with_suffix(".timing.cache")
    if trt.has_timing_cache:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
        if blob:
            notices.append(f"reused timing cache {cache_path}")
    else:
        cache_path = None
        if timing_cache:
            notices.append(f"{trt.label} has no timing cache (its kernels are chosen at load time); ignored")

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        why = log.summary(ignore=("CUDA driver version is insufficient",))
        raise EngineBuildError(f"{trt.label} failed to build {onnx_path} ({precision}): {why}")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))

    w_opt, h_opt = profile.opt[2], profile.opt[1]
    engine_meta = replace(
        meta,
        input_size=(w_opt, h_opt),
        max_batch=profile.max[0],
        extra={**meta.extra, "engine_source": onnx_path.name},
    )
    header = EngineHeader(
        meta=engine_meta,
        trt_flavour=trt.flavour,
        trt_version=trt.version,
        precision=precision,
        profile=profile,
        gpu=gpu_info(),
        build_command=rebuild_command(onnx_path, engine_path, precision, profile, workspace_mb),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if header.gpu is None:
        notices.append("no GPU visible: the engine is not tied to a GPU model yet (checked at load time)")
    size = write_engine(engine_path, header, memoryview(plan))
    return BuildReport(engine_path, header, seconds, size, cache_path, notices)


def check_in_profile(shape: Shape, profile: Profile, path: Path) -> None:
    if not profile.contains(shape):
        raise ShapeError(
            f"input {fmt_shape(shape)} (NxHxW) is outside {path.name}'s optimization profile "
            f"({profile.describe()}); rebuild with a wider --min-shape/--max-shape"
        )
