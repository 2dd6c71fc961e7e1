"""TensorRT backend: a segstream engine file run with the TensorRT 10+ tensor-address API.

Loading checks, in order and before TensorRT touches the plan: the segstream header (ModelFileError),
the TensorRT flavour/version and GPU it was built for (EngineMismatch, with the rebuild command), then
that a CUDA GPU is usable (BackendUnavailable). Device memory comes from torch CUDA tensors: buffers are
allocated once, grown when a larger shape arrives, and host copies go through pinned memory,
asynchronously on one CUDA stream. Frames arrive as uint8 and are normalized on the GPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from engines.build import EngineHeader, check_compatible, check_in_profile, gpu_info, read_engine
from engines.runtime.base import BackendUnavailable, ModelFileError, Runtime, RuntimeError_, ShapeError
from engines.runtime.contract import TensorSpec, check_io
from engines.runtime.inputs import IMAGE, Batch, as_inputs, feed, layout

INPUT_NAME = "images"


def _torch_cuda(device: str):
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(
            "the TensorRT runtime allocates GPU memory through torch; install torch with CUDA"
        ) from None
    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        raise BackendUnavailable(f"TensorRT needs a CUDA GPU: {why}")
    return torch


class TensorRTRuntime(Runtime):
    backend = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        input_size: tuple[int, int] | None = None,
        verbose: bool = False,
        **_ignored,
    ) -> None:
        from engines.trt_compat import capturing_logger, load_trt

        self.path = Path(path)
        header, plan = read_engine(self.path)
        self.header: EngineHeader = header
        trt = load_trt()  # whichever is installed; check_compatible says when it is not the builder's
        check_compatible(header, trt.flavour, trt.version, gpu_info(), self.path)
        if device == "cpu":
            raise BackendUnavailable("TensorRT runs on a GPU only; run the .onnx with ONNX Runtime on CPU")
        torch = _torch_cuda(device)
        self.torch = torch
        self.device = device if device.startswith("cuda") else "cuda"
        self.meta = header.meta
        if input_size is not None:
            self.meta = replace(self.meta, input_size=(int(input_size[0]), int(input_size[1])))
            w, h = self.meta.input_size
            check_in_profile((1, h, w), header.profile, self.path)
        self.wants_uint8 = self.meta.channels <= 3  # RGB-D depth is 16-bit: fed as float (engines.depth)

        self._log = capturing_logger(trt, verbose)
        self._rt = trt.module.Runtime(self._log)
        self.engine = self._rt.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelFileError(
                f"{self.path}: TensorRT could not load the plan ({self._log.summary()}); "
                f"rebuild with: {header.build_command}"
            )
        self.context = self.engine.create_execution_context()
        mod = trt.module
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == mod.TensorIOMode.OUTPUT]
        # 'images', or an RGB-D model's 'image' + 'depth' (engines.runtime.inputs)
        self.inputs = [n for n in names if n not in self.outputs]
        if not ({INPUT_NAME, IMAGE} & set(self.inputs)) or "ids" not in self.outputs:
            raise ModelFileError(f"{self.path}: engine tensors {names} lack 'images' -> 'ids'")
        specs = {n: self._spec(mod, n) for n in names}
        check_io(
            self.path,
            self.meta,
            [specs[n] for n in names if n not in self.outputs],
            [specs[n] for n in self.outputs],
            input_dtypes=("float32", "float16"),
        )
        self._in_dtype = {
            n: torch.float16 if self.engine.get_tensor_dtype(n) == mod.DataType.HALF else torch.float32
            for n in self.inputs
        }

        dev = torch.device(self.device)
        self.stream = torch.cuda.Stream(device=dev)
        c = self.meta.channels
        # channels past the colour ones (RGB-D depth) come normalized already (engines.depth): identity
        pad = max(0, c - len(self.meta.std))
        self._scale = torch.tensor(
            [1.0 / (255.0 * s) for s in self.meta.std][:c] + [1.0] * pad, device=dev
        ).view(1, c, 1, 1)
        self._shift = torch.tensor(
            [-m / s for m, s in zip(self.meta.mean, self.meta.std, strict=False)][:c] + [0.0] * pad,
            device=dev,
        ).view(1, c, 1, 1)
        self._dev: dict[str, torch.Tensor] = {}  # flat device buffers, grown on demand
        self._host: dict[str, torch.Tensor] = {}  # flat pinned host buffers

    def _spec(self, mod, name: str) -> TensorSpec:
        """One engine tensor as the contract checks it (dynamic dims are -1 in TensorRT)."""
        dtypes = {"FLOAT": "float32", "HALF": "float16", "UINT8": "uint8", "INT8": "int8", "INT32": "int32"}
        dtypes |= {"INT64": "int64", "BOOL": "bool", "BF16": "bfloat16"}
        dt = self.engine.get_tensor_dtype(name)
        dtype = next((v for k, v in dtypes.items() if getattr(mod.DataType, k, None) == dt), str(dt))
        shape = tuple(int(d) if int(d) >= 0 else None for d in self.engine.get_tensor_shape(name))
        return TensorSpec(name, dtype, shape)

    # buffers ----------------------------------------------------------------------------------
    def _buffer(self, pool: dict, name: str, numel: int, dtype, pinned: bool = False):
        torch = self.torch
        buf = pool.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            if pinned:
                buf = torch.empty(numel, dtype=dtype, pin_memory=True)
            else:
                buf = torch.empty(numel, dtype=dtype, device=self.device)
            pool[name] = buf
        return buf[:numel]

    # execution --------------------------------------------------------------------------------
    def run(self, batch: Batch, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self.torch
        c = self.meta.channels
        if isinstance(batch, np.ndarray) and batch.dtype == np.uint8:  # one 'images' input, normalized here
            if batch.ndim != 4 or batch.shape[3] != c:
                raise ShapeError(f"uint8 batch must be N x H x W x {c}, got {batch.shape}")
            n, h, w = batch.shape[:3]
            feeds = {INPUT_NAME: batch}
        else:
            inputs = as_inputs(batch, self.meta)
            for name, ch in layout(self.meta):
                x = inputs[name]
                if x.ndim != 4 or x.shape[1] != ch:
                    raise ShapeError(f"float '{name}' must be N x {ch} x H x W, got {x.shape}")
            feeds = feed(inputs, self.inputs)
            first = next(iter(feeds.values()))
            n, h, w = first.shape[0], first.shape[2], first.shape[3]
        check_in_profile((n, h, w), self.header.profile, self.path)

        with torch.cuda.stream(self.stream):
            for name, arr in feeds.items():
                host_in = self._buffer(
                    self._host, "in_" + name, arr.size, torch.from_numpy(arr[:0]).dtype, pinned=True
                )
                host_in.numpy()[:] = arr.reshape(-1)
                dev_raw = self._buffer(self._dev, "raw_" + name, arr.size, host_in.dtype)
                dev_raw.copy_(host_in, non_blocking=True)
                ch = arr.shape[3] if arr.dtype == np.uint8 else arr.shape[1]
                x_in = self._buffer(self._dev, name, n * ch * h * w, self._in_dtype[name]).view(n, ch, h, w)
                if arr.dtype == np.uint8:  # NHWC BGR -> NCHW RGB, (x/255 - mean)/std, on the GPU
                    t = dev_raw.view(n, h, w, ch).permute(0, 3, 1, 2)
                    if ch >= 3:
                        t = t[:, [2, 1, 0, *range(3, ch)]]
                    x_in.copy_(t.float() * self._scale + self._shift)
                else:
                    x_in.copy_(dev_raw.view(n, ch, h, w))
                if not self.context.set_input_shape(name, (n, ch, h, w)):
                    raise ShapeError(
                        f"TensorRT refused input shape {(n, ch, h, w)} of '{name}' for {self.path.name}"
                    )
                self.context.set_tensor_address(name, x_in.data_ptr())
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                numel = int(np.prod(shape))
                buf = self._buffer(self._dev, name, numel, torch.uint8)
                self.context.set_tensor_address(name, buf.data_ptr())
                outs[name] = (buf, shape)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError_(f"TensorRT execution failed for {self.path.name}: {self._log.summary()}")
            wanted = ["ids", "confidence"] if confidence and "confidence" in outs else ["ids"]
            host = {}
            for name in wanted:
                buf, shape = outs[name]
                hb = self._buffer(self._host, "out_" + name, buf.numel(), torch.uint8, pinned=True)
                hb.copy_(buf, non_blocking=True)
                host[name] = (hb, shape)
        self.stream.synchronize()
        ids = host["ids"][0].numpy().reshape(host["ids"][1]).copy()
        conf = (
            host["confidence"][0].numpy().reshape(host["confidence"][1]).copy()
            if "confidence" in host
            else None
        )
        return ids, conf

    def close(self) -> None:
        self._dev.clear()
        self._host.clear()
