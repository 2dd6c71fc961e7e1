"""PyTorch backend: runs a training checkpoint (.pt) eagerly on CPU or CUDA.

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


class TorchRuntime(Runtime):
    """Eager PyTorch. CUDA: FP16 + channels-last, uint8 frames normalized on the GPU."""

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

    def _to_input(self, batch: np.ndarray) -> torch.Tensor:
        if batch.dtype == np.uint8:  # NHWC BGR -> NCHW RGB normalized, on the device
            if batch.ndim != 4 or batch.shape[3] != self.meta.channels:
                raise ShapeError(f"uint8 batch must be N x H x W x {self.meta.channels}, got {batch.shape}")
            t = torch.from_numpy(np.ascontiguousarray(batch))
            if self.device.startswith("cuda"):
                t = t.pin_memory().to(self.device, non_blocking=True)
            t = t.permute(0, 3, 1, 2)
            if self.meta.channels >= 3:
                order = [2, 1, 0] + list(range(3, self.meta.channels))
                t = t[:, order]
            x = t.float() * self._scale + self._shift
        else:
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
        with torch.inference_mode():
            logits = self._logits(batch)
            if not confidence:  # the softmax behind confidence costs a full-size exp: only when asked
                return logits.max(dim=1).indices.to(torch.uint8).cpu().numpy(), None
            ids, conf = logits_to_outputs(logits)
            return ids.cpu().numpy(), conf.cpu().numpy()

    def logits(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            return self._logits(batch).cpu().numpy()

    def close(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
