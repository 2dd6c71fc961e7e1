"""ONNX Runtime backend: the default that runs everywhere (CPU), CUDA/TensorRT providers when present."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.meta import META_KEY, MetadataError, ModelMeta
from engines.runtime import head
from engines.runtime.base import BackendUnavailable, ModelFileError, Runtime, ShapeError
from engines.runtime.contract import (
    CONFIDENCE,
    IDS,
    GraphSummary,
    check_classes,
    check_io,
    check_prediction,
    describe_file,
    inferred_class_count,
    ort_spec,
    read_graph,
)
from engines.runtime.inputs import IMAGE, Batch, as_inputs, feed, layout, zeros
from engines.runtime.prune import keep_outputs

INPUT_NAME = "images"


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device``: cpu | cuda | tensorrt | auto (best available, CPU last)."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "tensorrt"):
        wanted = "CUDAExecutionProvider" if device == "cuda" else "TensorrtExecutionProvider"
        if wanted not in available:
            raise BackendUnavailable(
                f"ONNX Runtime {ort.__version__} has no {wanted} (available: {', '.join(available)}); "
                "install onnxruntime-gpu for GPU inference"
            )
        chain = [wanted, "CUDAExecutionProvider"] if device == "tensorrt" else [wanted]
        return [p for p in dict.fromkeys(chain) if p in available] + ["CPUExecutionProvider"]
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
    raise BackendUnavailable(f"unknown device '{device}' for ONNX Runtime (use auto, cpu, cuda or tensorrt)")


class OrtRuntime(Runtime):
    """An exported segstream ONNX model in an ONNX Runtime session.

    ``threads``: intra-op threads (None = ONNX Runtime's default, one per core). ``spin``: let idle
    worker threads spin (faster alone, steals cores from other pipeline stages); None = default.
    ``input_size`` (w, h) overrides the metadata's size when the graph has dynamic H/W.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        spin: bool | None = None,
        input_size: tuple[int, int] | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        providers = providers_for(device)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # our errors say what is wrong; ORT's warnings are noise here
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if spin is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self._options = so  # the sessions built later (``confidence``, ``logits``) reuse them
        self._full_session: ort.InferenceSession | None = None
        # ONNX Runtime runs every node whatever outputs are asked for: the frame session runs the graph
        # without what only 'confidence' needs (engines.runtime.prune: 2.5 ms of the default model's
        # 12 ms per frame), and on the CPU without its argmax head either, which OpenCV does in a
        # quarter of the time (engines.runtime.head); a frame that asks for confidence gets the whole
        # graph
        data = self.path.read_bytes()
        try:  # the graph is read once here, for the head and the contract checks below
            self._summary: GraphSummary | None = read_graph(self.path, data)
        except ModelFileError:  # loading the file says what is wrong with it (describe_file, below)
            self._summary = None
        self.session, self._head = self._frame_graph(data, providers)
        self._pruned = self.session is not None
        try:
            if self.session is None:
                self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises Fail/InvalidProtobuf/... for bad files
            what = describe_file(self.path)
            if what is not None:  # a JPEG, an empty file, a checkpoint: say so rather than ORT's jargon
                raise ModelFileError(f"{self.path}: not a loadable ONNX model: the file {what}") from None
            msg = str(e).strip().splitlines()[0][:200]
            try:
                read_graph(self.path)  # the protobuf is whole: the graph itself is what ORT refuses
                why = f"ONNX Runtime refuses the graph: {msg}"
            except ModelFileError:
                why = f"truncated or corrupt? ONNX Runtime: {msg}"
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({why})") from None
        self.device = "cuda" if self.session.get_providers()[0] != "CPUExecutionProvider" else "cpu"
        self.meta = self._read_meta()
        ins = [ort_spec(i) for i in self.session.get_inputs()]
        # a cut session's outputs are not the model's: check what the whole graph declares
        outs = self._graph().outputs if self._pruned else [ort_spec(o) for o in self.session.get_outputs()]
        # what the graph takes: 'images', or an RGB-D model's 'image' + 'depth' (engines.runtime.inputs)
        self.input_names = [i.name for i in ins]
        first = next((i for i in ins if i.name in (INPUT_NAME, IMAGE)), None)
        shape = first.shape if first is not None and first.shape is not None else (None,) * 4
        self.fixed_hw = tuple(shape[2:4]) if len(shape) == 4 and None not in shape[2:4] else None
        self.fixed_batch = shape[0] if shape else None
        if input_size is not None:
            w, h = int(input_size[0]), int(input_size[1])
            if self.fixed_hw and self.fixed_hw != (h, w):
                fh, fw = self.fixed_hw
                raise ShapeError(f"{self.path}: exported for {fw}x{fh} only (fixed H/W), asked for {w}x{h}")
            self.meta = replace(self.meta, input_size=(w, h))
        check_io(self.path, self.meta, ins, outs)
        check_classes(self.path, self.meta, self._class_count())
        self.has_confidence = any(o.name == "confidence" for o in outs)
        if max_batch is not None:
            self.meta = replace(self.meta, max_batch=int(max_batch))
        if self.fixed_batch and self.meta.max_batch > self.fixed_batch:
            # a graph exported for batch 1 (or B) only: never hand it more; smaller batches are padded
            self.meta = replace(self.meta, max_batch=self.fixed_batch)
        self.providers = self.session.get_providers()
        self._smoke_test()

    def _graph(self) -> GraphSummary:
        """The file's graph as the quick protobuf walk reads it (once: two checks use it)."""
        if self._summary is None:
            self._summary = read_graph(self.path)
        return self._summary

    def _frame_graph(
        self, data: bytes, providers: list[str]
    ) -> tuple[ort.InferenceSession | None, head.Head | None]:
        """The session frames run on: the graph cut before its argmax head (CPU, float32 logits: a
        float16 graph's own Resize rounds in half precision, which the OpenCV head would not reproduce
        tie for tie), else cut to 'ids', else None (the file is loaded whole)."""
        cpu = providers[0] == "CPUExecutionProvider"
        found = head.find(self._summary) if cpu and self._summary is not None else None
        if found is not None:
            cut = keep_outputs(data, (found.logits, found.sizes))
            session = self._frame_session(cut, providers) if cut else None
            if session is not None and session.get_outputs()[0].type == "tensor(float)":
                return session, found
        cut = keep_outputs(data, (IDS,))
        return (self._frame_session(cut, providers) if cut else None), None

    def _frame_session(self, data: bytes, providers: list[str]) -> ort.InferenceSession | None:
        """A session on the cut graph, or None when ONNX Runtime refuses it: the file is then loaded as
        it is, which reports what is wrong with it (a cut made here must never be the error)."""
        try:
            return ort.InferenceSession(data, self._options, providers=providers)
        except Exception:  # noqa: BLE001 - any refusal: fall back to the file itself
            return None

    def _full(self) -> ort.InferenceSession:
        """The whole graph (ids, and confidence when it has it), built on the first frame that asks for
        confidence (the infer stage asks when a stream is primed, before its first frame) or whose head
        the frame session cannot reproduce, and checked like the first."""
        if self._full_session is None:
            if not self._pruned:
                self._full_session = self.session  # it is the whole graph
            else:
                self._full_session = ort.InferenceSession(
                    str(self.path), self._options, providers=self.providers
                )
                n, x = self._feed(zeros(self.meta))
                out = self._full_session.run([IDS, CONFIDENCE] if self.has_confidence else [IDS], x)
                check_prediction(self.path, self.meta, 1, out[0][:n], out[1][:n] if len(out) > 1 else None)
        return self._full_session

    def _class_count(self) -> int | None:
        """Classes the graph's ArgMax picks among: the quick protobuf walk, else shape inference."""
        try:
            count = self._graph().class_count()
        except ModelFileError:  # ONNX Runtime loaded it, so our reader is the one at fault: look closer
            count = None
        return count if count is not None else inferred_class_count(self.path, self.meta)

    def _smoke_test(self) -> None:
        """Run one blank batch: what the graph really returns must fit the contract too (declared
        shapes can be missing or wrong), so a bad model fails here, before any frame is read."""
        w, h = self.meta.input_size
        try:
            ids, conf = self.run(zeros(self.meta))
            self.blank_runs = 1  # a warm-up too: the infer stage counts it (stream.stages.infer)
        except ModelFileError:
            raise
        except Exception as e:  # noqa: BLE001 - ORT raises Fail/RuntimeException/... for broken graphs
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"{self.path}: fails on a blank {w}x{h} frame ({msg})") from None
        check_prediction(self.path, self.meta, 1, ids, conf)

    def _read_meta(self) -> ModelMeta:
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ModelFileError(
                f"{self.path}: no '{META_KEY}' metadata; export it with `segstream export` "
                "(the model's classes and normalization travel in that entry)"
            )
        try:
            return ModelMeta.from_json(props[META_KEY])
        except MetadataError as e:
            raise ModelFileError(f"{self.path}: {e}") from None

    def logits(self, batch: Batch) -> np.ndarray:
        """The tensor the graph's ArgMax reads, exposed as an extra output of a second session (built on
        the first call: the default session keeps computing ids/confidence only)."""
        if getattr(self, "_logits_session", None) is None:
            import onnx

            model = onnx.load(str(self.path))
            argmax = [n for n in model.graph.node if n.op_type == "ArgMax"]
            if not argmax:
                raise ModelFileError(
                    f"{self.path}: no ArgMax in the graph, so no logits for uncertainty maps"
                )
            name = argmax[-1].input[0]
            if name not in {o.name for o in model.graph.output}:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            self._logits_name = name
            self._logits_session = ort.InferenceSession(
                model.SerializeToString(), self._options, providers=self.providers
            )
        n, feed = self._feed(batch)
        (out,) = self._logits_session.run([self._logits_name], feed)
        return np.asarray(out[:n], np.float32)

    def _feed(self, batch: Batch) -> tuple[int, dict[str, np.ndarray]]:
        """(frames in the batch, what session.run takes): checked, float32, padded to a fixed batch."""
        inputs = as_inputs(batch, self.meta)
        for name, channels in layout(self.meta):
            x = inputs[name]
            if x.ndim != 4 or x.shape[1] != channels:
                raise ShapeError(f"'{name}' must be N x {channels} x H x W float32, got {x.shape}")
        x = next(iter(inputs.values()))
        n = x.shape[0]
        if n > self.meta.max_batch:
            raise ShapeError(f"batch of {n} exceeds the model's max batch {self.meta.max_batch}")
        if self.fixed_hw and tuple(x.shape[2:]) != self.fixed_hw:
            raise ShapeError(
                f"{self.path}: takes {self.fixed_hw[1]}x{self.fixed_hw[0]} only, "
                f"got {x.shape[3]}x{x.shape[2]}"
            )
        out = {k: v.astype(np.float32, copy=False) for k, v in feed(inputs, self.input_names).items()}
        if self.fixed_batch and n < self.fixed_batch:  # the graph takes exactly fixed_batch: pad
            pad = self.fixed_batch - n
            out = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), np.float32)]) for k, v in out.items()}
        return n, out

    def run(self, batch: Batch, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        if confidence and not self.has_confidence:
            raise ModelFileError(f"{self.path}: the model has no 'confidence' output")
        n, x = self._feed(batch)
        if not confidence and self._head is not None:
            logits, sizes = self.session.run([self._head.logits, self._head.sizes], x)
            ids = head.argmax_upsampled(logits, sizes)
            if ids is not None:
                return ids[:n], None
            # not an upsampling: only the graph's own head is known to give the model's ids, from now on
            self._head = None
            cut = keep_outputs(self.path.read_bytes(), (IDS,))
            self.session = (self._frame_session(cut, self.providers) if cut else None) or self._full()
        names = [IDS, CONFIDENCE] if confidence else [IDS]
        out = (self._full() if confidence else self.session).run(names, x)
        return out[0][:n], (out[1][:n] if confidence else None)
