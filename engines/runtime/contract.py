"""The model contract: what a model file must be for segstream to run it, checked when it is loaded.

Input: one float ``images`` tensor, N x C x H x W (C = the metadata's channels; H/W, when the graph fixes
them, = the metadata's input size) — or, for an RGB-D model exported with two inputs, the ones its
metadata lists (``extra["inputs"]``: ``image`` N x 3 x H x W, ``depth`` N x 1 x H x W;
engines.runtime.inputs). Outputs: ``ids``, uint8 class ids N x H' x W', every id below the metadata's
class count, and optionally ``confidence``, uint8 of the same shape. ``segstream export``
writes exactly that. A file that breaks the contract (a classifier's 1x1000 logits, a float image, an
ArgMax over 19 classes with an 11-class table, a JPEG renamed .onnx) fails at load with one line naming
the file and what is wrong — not with a garbage video or a traceback deep in the overlay stage.

Two depths: ``read_graph`` + ``check_io`` + ``GraphSummary.class_count`` read the ONNX protobuf directly
(about a millisecond, no ``onnx`` import), so the supervisor checks before it starts any stage; a
backend's load adds ONNX shape inference where the quick walk cannot tell, and one blank test batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.meta import ModelMeta
from engines.runtime.base import ModelFileError

INPUT_NAME = "images"
IDS = "ids"
CONFIDENCE = "confidence"

# ONNX Runtime's type strings -> NumPy names (what every message uses)
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
# ONNX TensorProto.DataType numbers -> NumPy names
_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool"}
_ONNX_TYPES |= {10: "float16", 11: "float64", 16: "bfloat16"}

# Ops between a classifier convolution and the ArgMax that keep the channel (class) count.
_KEEPS_CHANNELS = frozenset(
    ("Resize", "Upsample", "Relu", "LeakyRelu", "Sigmoid", "Clip", "BatchNormalization", "Identity")
    + ("Dropout", "Softmax", "LogSoftmax", "Cast", "QuantizeLinear", "DequantizeLinear")
    + ("Add", "Sub", "Mul", "Div")
)

# Leading bytes of files people hand over by mistake -> what to call them.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive (PyTorch .pt checkpoints are ZIP archives)"),
    (b"SEGSTRT", "a segstream TensorRT engine (name it .engine)"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (b"RIFF", "a RIFF file (AVI video or WAV audio)"),
    (b"%PDF", "a PDF document"),
)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the backend declares it."""

    name: str
    dtype: str  # NumPy name: float32, uint8, ...
    shape: tuple[int | None, ...] | None  # None: rank unknown; a None dim is dynamic

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.dtype} (rank unknown)"
        return f"{self.dtype} [{', '.join('?' if d is None else str(d) for d in self.shape)}]"


def ort_spec(arg) -> TensorSpec:
    """An ONNX Runtime NodeArg -> TensorSpec (symbolic and missing dims are dynamic)."""
    shape = arg.shape
    dims = None if shape is None else tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), dims)


# ---------------------------------------------------------------- the ONNX graph, read directly


@dataclass
class GraphSummary:
    inputs: list[TensorSpec]  # graph inputs that are not initializers
    outputs: list[TensorSpec]
    producers: dict[str, tuple[str, list[str], int | None]] = field(default_factory=dict)
    # ^ tensor name -> (op_type, input names, 'axis' attribute) of the node that makes it
    attributes: dict[str, dict[str, int | str]] = field(default_factory=dict)
    # ^ tensor name -> the int and string attributes of the node that makes it
    initializer_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def class_count(self) -> int | None:
        """How many classes the ArgMax that makes 'ids' picks among, when the graph shows it plainly:
        ArgMax over axis 1 of a convolution's output (through resizes, activations, Q/DQ); else None."""
        node = self.producers.get(IDS)
        while node is not None and node[0] in ("Cast", "Identity"):
            node = self.producers.get(node[1][0]) if node[1] else None
        if node is None or node[0] != "ArgMax" or node[2] not in (1, -3) or not node[1]:
            return None
        node = self.producers.get(node[1][0])
        for _ in range(64):
            if node is None or not node[1]:
                return None
            if node[0] in ("Conv", "ConvTranspose") and len(node[1]) > 1:
                dims = self._weight_dims(node[1][1])
                if dims is None or len(dims) < 2:
                    return None
                return dims[0] if node[0] == "Conv" else None  # ConvTranspose needs 'group': not read
            if node[0] not in _KEEPS_CHANNELS:
                return None
            node = self.producers.get(node[1][0])
        return None

    def _weight_dims(self, name: str) -> tuple[int, ...] | None:
        if name in self.initializer_dims:
            return self.initializer_dims[name]
        node = self.producers.get(name)  # quantized weights: DequantizeLinear(initializer)
        if node is not None and node[0] == "DequantizeLinear" and node[1]:
            return self.initializer_dims.get(node[1][0])
        return None


def read_graph(path: str | Path, data: bytes | None = None) -> GraphSummary:
    """An ONNX file's declared inputs/outputs, node wiring and weight shapes, from the protobuf alone
    (``data``: the file's bytes, when the caller has read them already; ``path`` then names it).

    Field numbers: ModelProto.graph 7; GraphProto node 1, initializer 5, input 11, output 12; NodeProto
    input 1, output 2, op_type 4, attribute 5 {name 1, i 3, s 4}; TensorProto dims 1, name 8; ValueInfoProto
    name 1, type 2 {tensor_type 1 {elem_type 1, shape 2 {dim 1 {dim_value 1}}}}.
    """
    import contextlib
    import mmap

    from engines.runtime.probe import _fields, _varint

    def text(buf, span) -> str:
        return bytes(buf[span[0] : span[1]]).decode(errors="replace")

    def ints(buf, wire, value) -> list[int]:
        if wire == 0:
            return [value]
        out, pos = [], value[0]
        while pos < value[1]:
            v, pos = _varint(buf, pos)
            out.append(v)
        return out

    def value_info(buf, span) -> TensorSpec:
        name, dtype, shape = "", "non-tensor", None
        for n, w, v in _fields(buf, *span):
            if n == 1 and w == 2:
                name = text(buf, v)
            elif n == 2 and w == 2:
                for tn, tw, tv in _fields(buf, *v):
                    if tn != 1 or tw != 2:
                        continue  # sequence/map/optional types: no tensor at all
                    dtype = "undefined"  # elem_type 0 is left out of the encoding
                    for fn, fw, fv in _fields(buf, *tv):
                        if fn == 1 and fw == 0:
                            dtype = _ONNX_TYPES.get(fv, f"onnx type {fv}")
                        elif fn == 2 and fw == 2:
                            dims: list[int | None] = []
                            for dn, dw, dv in _fields(buf, *fv):
                                if dn == 1 and dw == 2:
                                    vals = [x for k, kw, x in _fields(buf, *dv) if k == 1 and kw == 0]
                                    dims.append(vals[0] if vals and 0 < vals[0] < 1 << 62 else None)
                            shape = tuple(dims)
        return TensorSpec(name, dtype, shape)

    def node(buf, span, producers, attributes) -> None:
        op, ins, outs, axis, attrs = "", [], [], None, {}
        for n, w, v in _fields(buf, *span):
            if n == 1 and w == 2:
                ins.append(text(buf, v))
            elif n == 2 and w == 2:
                outs.append(text(buf, v))
            elif n == 4 and w == 2:
                op = text(buf, v)
            elif n == 5 and w == 2:
                attr = {k: x for k, kw, x in _fields(buf, *v) if (k, kw) in ((1, 2), (3, 0), (4, 2))}
                if 1 not in attr:
                    continue
                name = text(buf, attr[1])
                if 3 in attr:
                    a = attr[3]
                    attrs[name] = a - (1 << 64) if a >= 1 << 63 else a  # int64 two's complement
                elif 4 in attr:
                    attrs[name] = text(buf, attr[4])
        axis = attrs.get("axis") if isinstance(attrs.get("axis"), int) else None
        for o in outs:
            producers[o] = (op, ins, axis)
            attributes[o] = attrs

    path = Path(path)
    try:
        with contextlib.ExitStack() as stack:
            if data is not None:
                buf = memoryview(data)
            else:
                f = stack.enter_context(open(path, "rb"))
                buf = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            top = list(_fields(buf))  # every top-level field, so a cut anywhere in the file shows
            graph = next((v for n, w, v in top if n == 7 and w == 2), None)
            if graph is None:
                raise ModelFileError(f"{path}: not a loadable ONNX model (no graph)")
            g = GraphSummary([], [])
            for n, w, v in _fields(buf, *graph):
                if n == 1 and w == 2:
                    node(buf, v, g.producers, g.attributes)
                elif n == 11 and w == 2:
                    g.inputs.append(value_info(buf, v))
                elif n == 12 and w == 2:
                    g.outputs.append(value_info(buf, v))
                elif n == 5 and w == 2:
                    name, dims = "", []
                    for k, kw, x in _fields(buf, *v):
                        if k == 8 and kw == 2:
                            name = text(buf, x)
                        elif k == 1:
                            dims.extend(ints(buf, kw, x))
                    g.initializer_dims[name] = tuple(dims)
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except (ValueError, TypeError) as e:  # mmap of an empty file is ValueError too
        what = describe_file(path)
        why = f": the file {what}" if what else f" (truncated or corrupt? {e})"
        raise ModelFileError(f"{path}: not a loadable ONNX model{why}") from None
    # old exporters list the weights among the inputs too
    g.inputs = [i for i in g.inputs if i.name not in g.initializer_dims]
    return g


def describe_file(path: str | Path) -> str | None:
    """What a file that did not load looks like, from its size and first bytes; None when unremarkable."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is empty (0 bytes)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"is {what}"
    if head[4:8] == b"ftyp":
        return "is an MP4/MOV video"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle (a legacy PyTorch file?)"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "is a text file"
    return None


# ---------------------------------------------------------------- the checks


def check_io(
    path: str | Path,
    meta: ModelMeta,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    input_dtypes: Sequence[str] = ("float32",),
) -> None:
    """Declared inputs/outputs against the contract; ModelFileError naming the file and the fault."""

    def fail(what: str) -> ModelFileError:
        return ModelFileError(f"{path}: {what}")

    from engines.runtime.inputs import file_layout

    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}
    expected = file_layout(meta)
    for name, _ in expected:
        if name not in ins:
            raise fail(f"no '{name}' input (inputs: {', '.join(ins) or 'none'})")
    extra = [n for n in ins if n not in dict(expected)]
    if extra:
        fed = ", ".join(f"'{n}'" for n, _ in expected)
        raise fail(f"needs input(s) {', '.join(extra)}; segstream feeds only {fed}")
    for name, channels in expected:
        img = ins[name]
        wanted = f"{'/'.join(input_dtypes)} N x {channels} x H x W"
        if img.dtype not in input_dtypes or (img.shape is not None and len(img.shape) != 4):
            raise fail(f"input '{name}' is {img.describe()}; segstream feeds {wanted}")
        if img.shape is None:
            continue
        c, h, w = img.shape[1:]
        if c is not None and c != channels:
            raise fail(f"input '{name}' takes {c} channels but the metadata says {channels}")
        mw, mh = meta.input_size
        if h is not None and w is not None and (h, w) != (mh, mw):
            raise fail(f"the graph takes {w}x{h} frames only but the metadata says input_size {mw}x{mh}")

    if IDS not in outs:
        raise fail(f"no '{IDS}' output (outputs: {', '.join(outs) or 'none'})")
    for name in (IDS, CONFIDENCE):
        t = outs.get(name)
        if t is None:
            continue
        if t.dtype != "uint8" or (t.shape is not None and len(t.shape) != 3):
            what = "class ids" if name == IDS else "confidence (max softmax x 255)"
            raise fail(
                f"output '{name}' is {t.describe()}; segstream needs uint8 {what} N x H x W "
                "(export with `segstream export`, which adds the ArgMax over the class axis)"
            )


def check_classes(path: str | Path, meta: ModelMeta, count: int | None) -> None:
    """The graph's class count (None: unknown) against the metadata's class table."""
    if count is not None and count != meta.classes.num_classes:
        raise ModelFileError(
            f"{path}: the graph picks among {count} classes but its metadata lists {meta.classes.num_classes}"
        )


def inferred_class_count(path: str | Path, meta: ModelMeta) -> int | None:
    """The ArgMax's class count by ONNX shape inference with the input fixed to the metadata's size
    (data propagation resolves the size-derived Resize shapes of exported nets); None if unresolved.
    Slower than ``GraphSummary.class_count`` (an ``onnx`` import and a pass over the graph), but it
    follows any chain of ops."""
    import onnx

    from engines.runtime.inputs import file_layout

    try:
        model = onnx.load(str(path), load_external_data=False)
        graph = model.graph
        w, h = meta.input_size
        for name, channels in file_layout(meta):
            inputs = [i for i in graph.input if i.name == name]
            dims = inputs[0].type.tensor_type.shape.dim if inputs else []
            if len(dims) != 4:
                return None
            for d, v in zip(dims, (1, channels, h, w), strict=True):
                if not d.HasField("dim_value"):
                    d.ClearField("dim_param")
                    d.dim_value = v
        producer = {out: node for node in graph.node for out in node.output}
        node = producer.get(IDS)
        while node is not None and node.op_type in ("Cast", "Identity"):
            node = producer.get(node.input[0])
        if node is None or node.op_type != "ArgMax":
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        infos = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
        info = next((v for v in infos if v.name == node.input[0]), None)
        shape = info.type.tensor_type.shape.dim if info is not None else []
        if not -len(shape) <= axis < len(shape) or not shape:
            return None
        d = shape[axis]
        return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
    except Exception:  # noqa: BLE001 - this check only adds certainty; ONNX Runtime has loaded the model
        return None


def check_onnx_file(path: str | Path, meta: ModelMeta, thorough: bool = False) -> GraphSummary:
    """Everything the file itself shows: declared inputs/outputs and the class count. ``thorough`` adds
    shape inference when the quick walk cannot see the class count."""
    g = read_graph(path)
    check_io(path, meta, g.inputs, g.outputs)
    count = g.class_count()
    if count is None and thorough:
        count = inferred_class_count(path, meta)
    check_classes(path, meta, count)
    return g


def check_prediction(
    path: str | Path,
    meta: ModelMeta,
    batch: int,
    ids: np.ndarray,
    confidence: np.ndarray | None,
) -> None:
    """What the model returned for a test batch: shapes, dtypes and class ids within the table."""
    where = f"{path}: on a test batch of {batch}"
    if not isinstance(ids, np.ndarray) or ids.dtype != np.uint8 or ids.ndim != 3 or ids.shape[0] != batch:
        got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, np.ndarray) else type(ids).__name__
        raise ModelFileError(f"{where} '{IDS}' came out as {got}, not uint8 [{batch}, H, W]")
    if confidence is not None and (confidence.dtype != np.uint8 or confidence.shape != ids.shape):
        raise ModelFileError(
            f"{where} '{CONFIDENCE}' came out as {confidence.dtype} {list(confidence.shape)}, "
            f"not uint8 {list(ids.shape)} like '{IDS}'"
        )
    n = meta.classes.num_classes
    top = int(ids.max()) if ids.size else 0
    if top >= n:
        raise ModelFileError(f"{where} the model output class id {top}; its metadata lists only {n} classes")
