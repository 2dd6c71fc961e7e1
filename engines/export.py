"""PyTorch model -> ONNX file that every segstream runtime can run on its own.

The exported graph takes ``images`` (float32 NCHW, normalized) and returns ``ids`` (uint8 argmax) and
``confidence`` (uint8 max softmax * 255), so no backend pays for a NumPy argmax over the logits. An RGB-D
model (DepthSpec in its metadata) takes two inputs instead, ``image`` (float32 N x 3 x H x W, normalized
as RGB models' ``images``) and ``depth`` (float32 N x 1 x H x W, normalized as its DepthSpec says); its
metadata lists them under ``extra["inputs"]`` (engines.runtime.inputs). The model's ModelMeta JSON rides
in metadata_props["segstream.meta"]. Every export is checked against PyTorch: max |logits difference|
under a tolerance and class-id masks agreeing, else ExportError.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from engines.depth import depth_spec_of
from engines.errors import SegstreamError
from engines.meta import META_KEY, MetadataError, ModelMeta

DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("ids", "confidence")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class ExportError(SegstreamError):
    """Export failed, or the exported graph disagrees with PyTorch."""


@dataclass
class Verification:
    images: str  # what the check ran on
    batch: int
    max_abs_diff: float  # max |logits_onnx - logits_torch|
    tolerance: float
    mask_agreement: float  # fraction of pixels whose class id matches PyTorch's
    near_tie_disagreements: int  # disagreeing pixels whose top-2 logit margin is within 2x max_abs_diff
    disagreements: int


@dataclass
class ExportReport:
    path: Path
    opset: int
    precision: str
    dynamic_batch: bool
    dynamic_hw: bool
    simplified: bool
    size_bytes: int = 0
    verification: Verification | None = None
    notices: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- metadata in ONNX files


def set_meta(model: onnx.ModelProto, meta: ModelMeta) -> None:
    """Write (replace) the segstream metadata entry of an ONNX model in place."""
    keep = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    model.metadata_props.add(key=META_KEY, value=meta.to_json())


def get_meta(model: onnx.ModelProto, path: str | Path = "model") -> ModelMeta:
    for p in model.metadata_props:
        if p.key == META_KEY:
            try:
                return ModelMeta.from_json(p.value)
            except MetadataError as e:
                raise ExportError(f"{path}: metadata '{META_KEY}' is invalid: {e}") from None
    raise ExportError(f"{path}: no '{META_KEY}' metadata (not exported by segstream export?)")


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several unrelated types on garbage
        raise ExportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and arithmetic inside, float32 'images' in (for TensorRT-RTX's strongly typed nets)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about every value clamped to the fp16 range
        out = float16.convert_float_to_float16(model, keep_io_types=True)
    # The converter retypes some Cast outputs (shape arithmetic of size-derived pooling) to fp16 in
    # value_info without changing the Cast itself; make the node agree so the graph loads.
    types = {v.name: v.type.tensor_type.elem_type for v in out.graph.value_info}
    for node in out.graph.node:
        if node.op_type == "Cast" and types.get(node.output[0]) == onnx.TensorProto.FLOAT16:
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                    a.i = onnx.TensorProto.FLOAT16
    return out


def is_fp16(model: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


# ---------------------------------------------------------------- images for verification


def load_images(directory: str | Path, count: int = 4) -> list[np.ndarray]:
    """Up to ``count`` BGR images from DIR (or DIR/images, the CamVid layout), sorted by name."""
    import cv2

    d = Path(directory)
    if (d / "images").is_dir():
        d = d / "images"
    if not d.is_dir():
        raise ExportError(f"image folder not found: {directory}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportError(f"{d}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if count > 0 and len(files) > count:  # spread the picks over the folder, not the first N frames
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, count)]
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise ExportError(f"{f}: not a readable image")
        out.append(img)
    return out


def synthetic_images(meta: ModelMeta, count: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Smooth gradients plus noise: a stand-in when no real images are given (said so in the report)."""
    rng = np.random.default_rng(seed)
    w, h = meta.input_size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200.0
        img = base[..., : meta.channels] + rng.normal(0, 20, (h, w, min(3, meta.channels)))
        if meta.channels > 3:
            img = np.concatenate([img, rng.uniform(0, 255, (h, w, meta.channels - 3))], -1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


# ---------------------------------------------------------------- export


def _torch_export(head, dummy: dict, opset: int, dynamic_hw: bool) -> onnx.ModelProto:
    """``dummy``: input name -> example tensor, in the order ``head`` takes them."""
    import torch

    axes_in = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    axes_out = {0: "batch", 1: "height", 2: "width"} if dynamic_hw else {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python ints
        torch.onnx.export(
            head,
            tuple(dummy.values()),
            buf,
            input_names=list(dummy),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_axes={**{n: axes_in for n in dummy}, **{n: axes_out for n in OUTPUT_NAMES}},
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter needs onnxscript, which core installs lack
        )
    return onnx.load_from_string(buf.getvalue())


def _simplify(model: onnx.ModelProto, notices: list[str]) -> tuple[onnx.ModelProto, bool]:
    try:
        import onnxsim
    except ImportError:
        notices.append("onnxsim not installed: graph left unsimplified")
        return model, False
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as e:  # noqa: BLE001 - onnxsim raises plain RuntimeErrors from C++
        notices.append(f"onnxsim failed ({type(e).__name__}: {str(e)[:120]}); graph left unsimplified")
        return model, False
    if not ok:
        notices.append("onnxsim could not validate the simplified graph; kept the original")
        return model, False
    return simplified, True


def _session(model: onnx.ModelProto, extra_outputs: Sequence[tuple[str, int]] = ()):
    import onnxruntime as ort

    if extra_outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for name, elem in extra_outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _logits_tensor(model: onnx.ModelProto) -> tuple[str, int]:
    """Name and element type of the tensor the in-graph ArgMax reads (the logits)."""
    name = next((n.input[0] for n in model.graph.node if n.op_type == "ArgMax"), None)
    if name is None:
        raise ExportError("exported graph has no ArgMax node (ids output missing?)")
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name == name:
            return name, vi.type.tensor_type.elem_type
    return name, onnx.TensorProto.FLOAT16 if is_fp16(model) else onnx.TensorProto.FLOAT


def _torch_logits(net, batch: np.ndarray) -> np.ndarray:
    """The PyTorch network's logits on its training input (RGB-D: the 4-channel concatenation)."""
    import torch

    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()


def _graph_feed(batch: np.ndarray, meta: ModelMeta) -> dict[str, np.ndarray]:
    """The graph's inputs for a training-form batch: {'images': batch}, or an RGB-D model's image and
    depth channels apart (engines.runtime.inputs)."""
    from engines.runtime.inputs import as_inputs, feed, file_layout, unpack

    return feed(as_inputs(unpack(batch, meta), meta), [n for n, _ in file_layout(meta)])


def _hw_is_dynamic(model: onnx.ModelProto, net, meta: ModelMeta, notices: list[str]) -> bool:
    """Run the graph at a second resolution and compare with PyTorch there."""
    w, h = meta.input_size
    h2, w2 = max(32, (h * 3 // 4) // 32 * 32), max(32, (w * 3 // 4) // 32 * 32)
    if (h2, w2) == (h, w):
        h2, w2 = h + 32, w + 32
    x = np.random.default_rng(1).normal(0, 1, (1, meta.channels, h2, w2)).astype(np.float32)
    try:
        ref = _torch_logits(net, x).argmax(1).astype(np.uint8)
    except Exception as e:  # noqa: BLE001 - the network itself refuses this size
        notices.append(f"PyTorch model fails at {w2}x{h2} ({type(e).__name__}); exporting fixed H/W")
        return False
    try:
        ids = _session(model).run(["ids"], _graph_feed(x, meta))[0]
    except Exception as e:  # noqa: BLE001
        notices.append(f"dynamic H/W graph fails in ONNX Runtime at {w2}x{h2} ({str(e)[:100]}); fixed H/W")
        return False
    if ids.shape != ref.shape or float(np.mean(ids == ref)) < 0.99:
        notices.append(f"dynamic H/W graph disagrees with PyTorch at {w2}x{h2}; exporting fixed H/W")
        return False
    return True


def verify(
    model: onnx.ModelProto,
    net,
    frames: Sequence[np.ndarray],
    meta: ModelMeta,
    *,
    source: str,
    tolerance: float | None = None,
    min_agreement: float = 0.999,
) -> Verification:
    """Compare the ONNX graph with the PyTorch network on ``frames``; ExportError when they differ."""
    from engines.runtime.preprocess import prepare_batch

    fp16 = is_fp16(model)
    frames = list(frames)[: max(1, min(4, meta.max_batch))]
    spec = depth_spec_of(meta)
    if spec is not None:  # RGB-D: the colour frames, and depth as training normalized it
        from engines.depth import prepare_rgbd

        colour = [f[..., :3] for f in frames]
        h, w = colour[0].shape[:2]
        mm = np.random.default_rng(2).uniform(0, 1.2 * spec.max_mm, (len(colour), h, w))
        mm[np.random.default_rng(3).random(mm.shape) < 0.02] = 0  # sensor holes
        parts = prepare_rgbd(colour, list(mm.astype(np.uint16)), meta)
        batch = np.concatenate([parts["image"], parts["depth"]], axis=1)
    else:
        batch = prepare_batch(frames, meta)
    ref = _torch_logits(net, batch)
    logits_name, elem = _logits_tensor(model)
    sess = _session(model, [(logits_name, elem)])
    ids, logits = sess.run(["ids", logits_name], _graph_feed(batch, meta))
    logits = logits.astype(np.float32)
    # relative to the logits' own scale: randomly initialised nets emit logits near 1e-6
    scale = max(1e-3, float(np.abs(ref).max()))
    tol = tolerance if tolerance is not None else (3e-2 if fp16 else 1e-3) * scale
    diff = float(np.abs(logits - ref).max())
    ref_ids = ref.argmax(1)
    mismatch = ids != ref_ids
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    near_tie = int(np.count_nonzero(mismatch & (margin <= 2 * diff + 1e-6)))
    v = Verification(
        images=source,
        batch=batch.shape[0],
        max_abs_diff=diff,
        tolerance=tol,
        mask_agreement=1.0 - float(mismatch.mean()),
        near_tie_disagreements=near_tie,
        disagreements=int(mismatch.sum()),
    )
    if not diff <= tol:
        raise ExportError(
            f"ONNX logits differ from PyTorch by {diff:.3g} (> tolerance {tol:.3g}) on {source}"
        )
    # Pixels whose top-2 logits are closer than the numeric error may flip either way; only the others
    # count against the export.
    if v.mask_agreement < min_agreement and v.disagreements > near_tie:
        raise ExportError(
            f"ONNX class ids agree with PyTorch on only {v.mask_agreement:.4%} of pixels on {source} "
            f"({v.disagreements - near_tie} disagreements are not near-ties)"
        )
    return v


def export_onnx(
    model,
    meta: ModelMeta,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    static: bool = False,
    simplify: bool = True,
    verify_frames: Sequence[np.ndarray] | None = None,
    verify_source: str | None = None,
    tolerance: float | None = None,
) -> ExportReport:
    """Export an in-memory logits network with its metadata to ``path`` and verify it against PyTorch."""
    import torch

    from engines.runtime.inputs import rgbd_layout
    from engines.runtime.torch import SegmentationHead

    if opset < 17:
        raise ExportError(f"opset {opset} is too old: segstream exports need opset >= 17")
    path = Path(path)
    net = model.eval().float().cpu()
    w, h = meta.input_size
    if depth_spec_of(meta) is not None:
        # RGB-D: two inputs, image and depth (early fusion concatenates them in the graph, mid fusion
        # feeds depth to its branch); the metadata says so, for every runtime and the contract check
        from engines.models.fusion import RGBDInputs

        meta = replace(meta, extra={**meta.extra, "inputs": rgbd_layout(meta.channels)})
        head = SegmentationHead(RGBDInputs(net)).eval()
        dummy = {"image": torch.zeros(1, meta.channels - 1, h, w), "depth": torch.zeros(1, 1, h, w)}
    else:
        head = SegmentationHead(net).eval()
        dummy = {INPUT_NAME: torch.zeros(1, meta.channels, h, w)}
    notices: list[str] = []

    dynamic_hw = not static
    try:
        graph = _torch_export(head, dummy, opset, dynamic_hw)
    except Exception as e:  # noqa: BLE001 - the TorchScript exporter raises many types
        if not dynamic_hw:
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:300]}") from None
        notices.append(f"dynamic H/W export failed ({type(e).__name__}); exporting fixed {w}x{h}")
        dynamic_hw = False
        graph = _torch_export(head, dummy, opset, False)
    graph, simplified = _simplify(graph, notices) if simplify else (graph, False)
    if dynamic_hw and not _hw_is_dynamic(graph, net, meta, notices):
        dynamic_hw = False
        graph = _torch_export(head, dummy, opset, False)
        graph, simplified = _simplify(graph, notices) if simplify else (graph, False)
    if fp16:
        graph = to_fp16(graph)

    if verify_frames is None:
        verify_frames, verify_source = synthetic_images(meta), "synthetic images"
        notices.append("verified on synthetic images; pass real ones (--verify-data DIR) for a real check")
    source = verify_source or f"{len(verify_frames)} images"
    v = verify(graph, net, verify_frames, meta, source=source, tolerance=tolerance)
    if v.mask_agreement < 0.999:
        notices.append(
            f"mask agreement {v.mask_agreement:.4%}: all {v.disagreements} differing pixels are near-ties"
        )

    precision = "fp16" if fp16 else "fp32"
    info = {"opset": opset, "dynamic_hw": dynamic_hw, "dynamic_batch": True, "precision": precision}
    meta = replace(meta, extra={**meta.extra, "onnx": info})
    set_meta(graph, meta)
    graph.producer_name = "segstream"
    graph.doc_string = f"segstream {meta.arch} ({meta.classes.num_classes} classes)"
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported graph fails the ONNX checker: {str(e)[:300]}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(path))
    return ExportReport(
        path=path,
        opset=opset,
        precision=precision,
        dynamic_batch=True,
        dynamic_hw=dynamic_hw,
        simplified=simplified,
        size_bytes=path.stat().st_size,
        verification=v,
        notices=notices,
    )


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    static: bool = False,
    verify_dir: str | Path | None = None,
    verify_count: int = 4,
) -> ExportReport:
    """``segstream export``: a training checkpoint -> ONNX beside it (or at ``out``)."""
    from engines.runtime.torch import model_from_checkpoint

    checkpoint = Path(checkpoint)
    net, meta, _ = model_from_checkpoint(checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(".fp16.onnx" if fp16 else ".onnx")
    frames = source = None
    if verify_dir is not None and depth_spec_of(meta) is not None:
        raise ExportError(
            f"--verify-data {verify_dir}: reads colour images only, and {checkpoint.name} is an RGB-D model "
            "(leave it out: RGB-D models are verified on synthetic colour + depth)"
        )
    if verify_dir is not None:
        frames = load_images(verify_dir, verify_count)
        source = f"{len(frames)} images from {verify_dir}"
    meta = replace(meta, extra={**meta.extra, "source": checkpoint.name})
    return export_onnx(
        net, meta, out, opset=opset, fp16=fp16, static=static, verify_frames=frames, verify_source=source
    )
