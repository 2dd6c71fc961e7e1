"""Serve a segstream ONNX model from a Triton server on the CPU, with PyTriton (no GPU, no container).

    python3 docs/deploy/pytriton_serve.py MODEL.onnx --grpc-port 8001 --http-port 8000 [--name segstream]

PyTriton (``nvidia-pytriton``, a PyPI wheel) bundles the ``tritonserver`` binary and runs this Python callable
as a Triton model: the callable runs the ONNX model with ONNX Runtime. Clients see a regular Triton model:
input ``images`` (float32, N x C x H x W, normalized; an RGB-D model's two, ``image`` and ``depth``), outputs
``ids`` (uint8 class ids) and, when the model has it, ``confidence``; dynamic batching merges requests from
several clients. The model's segstream metadata
(classes, palette, normalization) is served in the model config's ``parameters`` under ``segstream.meta``,
as `segstream export --triton-repo` writes it for a real Triton server.

Interpreter: PyTriton's Python-backend stub is linked against the *system* ``libpython3.X.so``
(``/lib/x86_64-linux-gnu``), and nvidia-pytriton 0.7 needs numpy < 2. Run this script with the system Python
from a virtual environment of its own (``tools/install-dev.sh`` makes ``.venv-pytriton``); README.md says why.

It prints ``READY <grpc port>`` on stdout once the model answers, and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import site
import sys
import sysconfig
import time

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

META_KEY = "segstream.meta"


def use_own_interpreter() -> None:
    """Make Triton's Python-backend stub embed *this* interpreter, with this environment's packages.

    The stub is linked against ``libpython3.X.so.1.0`` by soname and finds the system's copy first
    (``/lib/x86_64-linux-gnu``); that interpreter's prefix is /usr, so under a pyenv or virtual-environment
    Python it sees none of the packages installed there and fails to load the model ("No module named
    'numpy'"). Putting this interpreter's own libpython first on LD_LIBRARY_PATH and its site-packages on
    PYTHONPATH (both inherited by tritonserver and the stub) fixes both; a Python built without a shared
    libpython cannot be embedded at all, and Debian's /usr/bin/python3 then is the one to use.
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p
        )
    paths = [*site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="segstream ONNX model (made by `segstream export`)")
    p.add_argument("--name", default="segstream", help="model name clients ask for")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--address", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching queue delay")
    args = p.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    meta_json = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if meta_json is None:
        print(f"{args.model}: no '{META_KEY}' metadata (export it with `segstream export`)", file=sys.stderr)
        return 2
    meta = json.loads(meta_json)
    outputs = [o.name for o in session.get_outputs() if o.name in ("ids", "confidence")]
    # 'images' (N x C x H x W), or an RGB-D model's 'image' (N x 3 x H x W) and 'depth' (N x 1 x H x W)
    inputs = [(i.name, int(i.shape[1])) for i in session.get_inputs()]

    @batch
    def infer(**arrays: np.ndarray) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(arrays[name], dtype=np.float32) for name, _ in inputs}
        got = session.run(outputs, feed)
        return dict(zip(outputs, got, strict=True))

    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        grpc_address=args.address,
        http_address=args.address,
        metrics_address=args.address,
        exit_on_error=True,
    )
    model_config = ModelConfig(
        max_batch_size=int(meta.get("max_batch", 8)),
        batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
    )
    use_own_interpreter()
    stop: list[int] = []
    # PyTriton puts the shared-memory extension behind an access token by default; segstream clients on this
    # host register regions with it (engines/runtime/triton.py), so it stays open while the repository,
    # statistics, trace and logging endpoints stay restricted
    security = TritonSecurityConfig(
        restricted_endpoints=["model-repository", "statistics", "trace", "logging"]
    )
    triton = Triton(config=config, security_config=security)
    triton.bind(
        model_name=args.name,
        infer_func=infer,
        inputs=[Tensor(name=name, dtype=np.float32, shape=(c, -1, -1)) for name, c in inputs],
        outputs=[Tensor(name=n, dtype=np.uint8, shape=(-1, -1)) for n in outputs],
        config=model_config,
    )
    # the metadata rides in the model config's parameters, where a real Triton repository keeps it (PyTriton
    # has no public switch for parameters: its generated config is extended before the model is loaded)
    for model in triton._model_manager.models:  # noqa: SLF001
        if model.model_name == args.name:
            model._get_triton_model_config().backend_parameters[META_KEY] = meta_json  # noqa: SLF001
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        triton.run()  # starts the server and loads the model; raises when either fails
        print(f"READY {args.grpc_port}", flush=True)
        while not stop:
            if not triton.is_alive():
                print("the Triton server or its model process died", file=sys.stderr)
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
