"""PyTorch backend: runs a training checkpoint (.pt) on CPU (eager) or CUDA (CUDA graphs, eager fallback).

On CUDA the frame path (uint8 NHWC batch -> normalize on the device -> model -> ids, and confidence when
asked) is captured once per (batch bucket, H, W, confidence) as a CUDA graph and replayed: one launch
instead of one per kernel, so batch 1 is no longer bound by kernel launches (``_FrameGraph``).

Also home of the checkpoint reader and of ``SegmentationHead`` (logits -> ids + confidence), which the
ONNX exporter wraps around every model so all backends compute the same outputs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.meta import MetadataError, ModelMeta
from engines.runtime.base import BackendUnavailable, ModelFileError, Runtime, ShapeError
from engines.runtime.inputs import DEPTH, IMAGE, Batch, as_inputs, batch_size

CHECKPOINT_FORMAT = "segstream-checkpoint"


class SegmentationHead(nn.Module):
    """Wraps a logits network: outputs uint8 class ids and uint8 confidence (max softmax * 255).

    max softmax = 1 / sum(exp(l - max l)): one exp pass, no division per class.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_to_outputs(self.net(*inputs))


def logits_to_outputs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top, ids = logits.max(dim=1)
    denom = torch.exp(logits - top.unsqueeze(1)).sum(dim=1)
    conf = torch.clamp(255.0 / denom + 0.5, 0.0, 255.0)
    return ids.to(torch.uint8), conf.to(torch.uint8)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a segstream checkpoint; anything else -> ModelFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: checkpoints carry RNG/optimizer state; they are our own files.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, BadZipFile, EOFError, RuntimeError, ...
        from engines.runtime.contract import describe_file

        what = describe_file(path)
        if what is not None and not what.startswith(("is a ZIP", "is a Python pickle")):
            raise ModelFileError(f"{path}: not a readable PyTorch checkpoint: the file {what}") from None
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise ModelFileError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt? {type(e).__name__}: {first})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelFileError(
            f"{path}: not a segstream checkpoint (format={found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    for key in ("arch", "model", "meta"):
        if key not in ckpt:
            raise ModelFileError(f"{path}: checkpoint lacks key '{key}'")
    return ckpt


def write_checkpoint(path: str | Path, net: nn.Module, meta: ModelMeta, arch_args: dict[str, Any]) -> Path:
    """Save ``net`` as an untrained (epoch 0) segstream checkpoint that ``read_checkpoint`` accepts."""
    path = Path(path)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "arch": meta.arch,
            "arch_args": arch_args,
            "model": net.state_dict(),
            "meta": meta.to_json(),
            "epoch": 0,
            "best_miou": 0.0,
        },
        path,
    )
    return path


def checkpoint_meta(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> ModelMeta:
    try:
        return ModelMeta.from_json(ckpt["meta"])
    except MetadataError as e:
        raise ModelFileError(f"{path}: {e}") from None


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, ModelMeta, dict[str, Any]]:
    """Checkpoint -> (network in eval mode on CPU, its ModelMeta, the raw checkpoint dict)."""
    from engines.models import build_model

    ckpt = read_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    args = dict(ckpt.get("arch_args") or {})
    args.setdefault("num_classes", meta.classes.num_classes)
    args.setdefault("in_channels", meta.channels)
    # the contract (engines.runtime.contract): ids index the metadata's class table, frames have its channels
    if int(args["num_classes"]) != meta.classes.num_classes:
        raise ModelFileError(
            f"{path}: the network has {args['num_classes']} output classes but its metadata lists "
            f"{meta.classes.num_classes}"
        )
    if int(args["in_channels"]) != meta.channels:
        raise ModelFileError(
            f"{path}: the network takes {args['in_channels']} channels but its metadata says {meta.channels}"
        )
    net = build_model(ckpt["arch"], **args)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelFileError(f"{path}: weights do not fit arch '{ckpt['arch']}' {args}: {first}") from None
    return net.eval(), meta, ckpt


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA GPU is usable, else 'cpu'; 'cuda' without one -> BackendUnavailable."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device visible"
            raise BackendUnavailable(f"device '{device}' requested but CUDA is not usable: {why}")
        return device
    if device != "cpu":
        raise BackendUnavailable(f"unknown device '{device}' for PyTorch (use auto, cpu or cuda[:N])")
    return device


#: most CUDA graphs one runtime keeps (each holds its own memory pool); shapes past that run eagerly
MAX_GRAPHS = 8
#: eager runs on a side stream before a capture: cudnn.benchmark picks its kernels and lazy
#: initializations (cuBLAS handles, workspaces) happen there, never inside the capture
WARMUP_RUNS = 3


def batch_bucket(n: int, max_batch: int) -> int:
    """The captured batch size a batch of ``n`` frames runs at: the next power of two, capped at the
    model's max batch. A pipeline's batches take every size from 1 to max batch; buckets keep that to
    about log2(max batch) graphs per input size (the padding frames cost GPU time, not launches)."""
    if n < 1 or n > max_batch:
        raise ValueError(f"batch of {n} outside 1..{max_batch}")
    return min(1 << (n - 1).bit_length(), max_batch)


class TorchRuntime(Runtime):
    """PyTorch. CUDA: FP16 + channels-last, uint8 frames normalized on the GPU, CUDA graphs (``cuda_graphs``:
    default on with CUDA; any capture failure falls back to eager with the reason in ``graph_error``)."""

    backend = "torch"

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        fp16: bool | None = None,
        channels_last: bool = True,
        input_size: tuple[int, int] | None = None,
        max_batch: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = pick_device(device)
        if threads:
            torch.set_num_threads(int(threads))
        net, meta, _ = model_from_checkpoint(self.path)
        if input_size is not None:
            meta = replace(meta, input_size=(int(input_size[0]), int(input_size[1])))
        if max_batch is not None:
            meta = replace(meta, max_batch=int(max_batch))
        self.meta = meta
        on_cuda = self.device.startswith("cuda")
        if on_cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        self.fp16 = on_cuda if fp16 is None else bool(fp16)
        if self.fp16 and not on_cuda:
            raise BackendUnavailable(
                "FP16 with PyTorch needs CUDA (CPU half-precision convolutions are slow)"
            )
        if cuda_graphs and not on_cuda:
            raise BackendUnavailable(f"CUDA graphs need a CUDA device, not '{self.device}'")
        self.dtype = torch.float16 if self.fp16 else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = SegmentationHead(net).to(self.device, dtype=self.dtype, memory_format=self.memory_format)
        self.model.eval()
        # normalize on the GPU: 4x fewer bytes over PCIe (not RGB-D: depth is 16-bit, engines.depth)
        self.wants_uint8 = on_cuda and meta.channels <= 3
        c = meta.channels
        # (x/255 - mean)/std == x*scale + shift, in the model's RGB order; channels past the colour
        # ones (depth) come normalized already: identity
        pad = max(0, c - len(meta.std))
        scale = torch.tensor([1.0 / (255.0 * s) for s in meta.std][:c] + [1.0] * pad, dtype=torch.float32)
        shift = torch.tensor(
            [-m / s for m, s in zip(meta.mean, meta.std, strict=False)][:c] + [0.0] * pad, dtype=torch.float32
        )
        self._scale = scale.view(1, c, 1, 1).to(self.device)
        self._shift = shift.view(1, c, 1, 1).to(self.device)
        # BGR -> RGB as an index tensor already on the device: indexing with a Python list would copy
        # the list to the GPU on every call, which a CUDA graph capture refuses
        order = [2, 1, 0] + list(range(3, c)) if c >= 3 else list(range(c))
        self._order = torch.tensor(order, dtype=torch.long, device=self.device)
        # CUDA graphs of the uint8 frame path, by (batch bucket, H, W, confidence)
        self.cuda_graphs = bool(self.wants_uint8 and (cuda_graphs is None or cuda_graphs))
        self.max_graphs = MAX_GRAPHS
        self.graph_error: str | None = None  # why graphs were turned off (a failed capture), if they were
        self._graphs: dict[tuple[int, int, int, bool], _FrameGraph] = {}
        self._side_stream = None  # made with the first capture

    @property
    def graphs(self) -> tuple[tuple[int, int, int, bool], ...]:
        """Keys (batch bucket, H, W, confidence) of the CUDA graphs captured so far."""
        return tuple(self._graphs)

    def _normalize(self, t: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC BGR on the device -> NCHW RGB normalized, in the model's dtype and layout."""
        t = t.permute(0, 3, 1, 2)
        if self.meta.channels >= 3:
            t = t.index_select(1, self._order)
        x = t.float() * self._scale + self._shift
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def _frame_outputs(self, frames: torch.Tensor, confidence: bool) -> tuple[torch.Tensor, ...]:
        """The whole frame path on device tensors, as eager ``run`` computes it: what a graph captures."""
        logits = self.model.net(self._normalize(frames)).float()
        if confidence:
            return logits_to_outputs(logits)
        return (logits.max(dim=1).indices.to(torch.uint8),)

    def _to_input(self, batch: np.ndarray) -> torch.Tensor:
        if batch.dtype == np.uint8:  # NHWC BGR -> NCHW RGB normalized, on the device
            if batch.ndim != 4 or batch.shape[3] != self.meta.channels:
                raise ShapeError(f"uint8 batch must be N x H x W x {self.meta.channels}, got {batch.shape}")
            t = torch.from_numpy(np.ascontiguousarray(batch))
            if self.device.startswith("cuda"):
                t = t.pin_memory().to(self.device, non_blocking=True)
            return self._normalize(t)
        if batch.ndim != 4 or batch.shape[1] != self.meta.channels:
            raise ShapeError(f"float batch must be N x {self.meta.channels} x H x W, got {batch.shape}")
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def _logits(self, batch: Batch) -> torch.Tensor:
        inputs = as_inputs(batch, self.meta)
        n = batch_size(inputs)
        if n > self.meta.max_batch:
            raise ShapeError(f"batch of {n} exceeds the model's max batch {self.meta.max_batch}")
        if len(inputs) == 1:
            return self.model.net(self._to_input(next(iter(inputs.values())))).float()
        from engines.models.fusion import forward_rgbd

        image, depth = (self._to_tensor(inputs[k]) for k in (IMAGE, DEPTH))
        return forward_rgbd(self.model.net, image, depth).float()

    def _to_tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return t.to(dtype=self.dtype, memory_format=self.memory_format)

    def run(self, batch: Batch, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        graph = self._graph_for(batch, confidence) if self.cuda_graphs else None
        if graph is not None:
            outs = graph(batch)  # type: ignore[arg-type]
            return outs[0], (outs[1] if confidence else None)
        with torch.inference_mode():
            logits = self._logits(batch)
            if not confidence:  # the softmax behind confidence costs a full-size exp: only when asked
                return logits.max(dim=1).indices.to(torch.uint8).cpu().numpy(), None
            ids, conf = logits_to_outputs(logits)
            return ids.cpu().numpy(), conf.cpu().numpy()

    def _graph_for(self, batch: Batch, confidence: bool) -> _FrameGraph | None:
        """The graph that runs this batch (captured now if new), or None: eager runs it (not a uint8
        frame batch, a malformed one the eager path will name, graphs full, or a capture that failed)."""
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4:
            return None
        n, h, w, c = batch.shape
        if c != self.meta.channels or not 1 <= n <= self.meta.max_batch:
            return None
        key = (batch_bucket(n, self.meta.max_batch), h, w, bool(confidence))
        graph = self._graphs.get(key)
        if graph is not None or len(self._graphs) >= self.max_graphs:
            return graph
        try:
            graph = _FrameGraph(self, *key)
        except Exception as e:  # noqa: BLE001 - any capture failure: eager from now on, reason kept
            self.cuda_graphs = False
            # the first error is the cause (ending an invalidated capture raises a second one on top)
            while isinstance(e.__context__, Exception):
                e = e.__context__
            first = (str(e).strip().splitlines() or [""])[0][:300]
            self.graph_error = f"capturing a CUDA graph for batch {key[0]} at {w}x{h} failed: " + (
                f"{type(e).__name__}: {first}"
            )
            self._graphs.clear()
            try:  # leave the device idle and its cache clean for the eager path
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - the eager path reports a broken device itself
                pass
            return None
        self._graphs[key] = graph
        return graph

    def logits(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            return self._logits(batch).cpu().numpy()

    def close(self) -> None:
        self._graphs.clear()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


class _FrameGraph:
    """One CUDA graph of ``TorchRuntime``'s frame path for a fixed (batch, H, W, confidence).

    Static buffers: a pinned host input and its device copy (what the graph reads), the graph's outputs
    and pinned host copies of them. A call copies the frames in (a batch smaller than the bucket fills
    its first rows; the rest hold earlier frames, whose outputs are dropped: a frame's result never
    depends on the others in eval mode), replays, and copies the outputs back.
    """

    def __init__(self, rt: TorchRuntime, batch: int, h: int, w: int, confidence: bool) -> None:
        dev = torch.device(rt.device)  # "cuda" alone: the current device, fixed now
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        shape = (batch, h, w, rt.meta.channels)
        # outside inference_mode: a graph captured under it can trip over inference tensors
        # (pytorch/pytorch#166792); no_grad is enough for a forward pass
        with torch.no_grad(), torch.cuda.device(self.device):
            self.host_in = torch.zeros(shape, dtype=torch.uint8).pin_memory()
            self._host_in_np = self.host_in.numpy()
            self.static_in = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            if rt._side_stream is None:
                rt._side_stream = torch.cuda.Stream(device=self.device)
            side = rt._side_stream
            # warm up on a side stream (PyTorch's CUDA graphs notes): kernels chosen, workspaces made
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    rt._frame_outputs(self.static_in, confidence)
            caller = torch.cuda.current_stream(self.device)
            caller.wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph, stream=side):
                    self.static_out = rt._frame_outputs(self.static_in, confidence)
            except BaseException:
                # a capture that fails can leave the side stream current (torch.cuda.graph's exit
                # raises before it restores the stream): the eager path must run where it ran before
                torch.cuda.set_stream(caller)
                raise
            self.host_out = tuple(torch.empty(o.shape, dtype=o.dtype).pin_memory() for o in self.static_out)
            self._host_out_np = tuple(t.numpy() for t in self.host_out)
            torch.cuda.synchronize(self.device)

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, ...]:
        n = frames.shape[0]
        np.copyto(self._host_in_np[:n], frames)
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            # the copy, the replay and the copies back are ordered on one stream; the host buffers are
            # reused only after the synchronize below
            self.static_in[:n].copy_(self.host_in[:n], non_blocking=True)
            self.graph.replay()
            for dev, host in zip(self.static_out, self.host_out, strict=True):
                host[:n].copy_(dev[:n], non_blocking=True)
            stream.synchronize()
        # copies: the host buffers are overwritten by the next call
        return tuple(a[:n].copy() for a in self._host_out_np)
