"""Triton Inference Server backend: the model runs on a (shared, usually GPU) Triton server; this process is
its gRPC client (``tritonclient``).

URI: ``triton://HOST:PORT/MODEL[?version=N&shm=auto|on|off&timeout=S]`` (PORT: Triton's gRPC port, 8001 by
default). The served model takes ``images`` (float32 N x C x H x W, normalized as the metadata says; an
RGB-D model ``image`` and ``depth``, engines.runtime.inputs) and
returns ``ids`` (uint8 N x H x W) and optionally ``confidence``, exactly like an exported ONNX model; its
segstream metadata travels in the model config's ``parameters`` under ``segstream.meta`` (written by
`segstream export --triton-repo`), so an edge host needs no model file.

Shared memory: with ``shm=on`` (``auto``: when the server is on this host's loopback) the input and output
tensors go through a POSIX shared-memory region registered with Triton's system shared-memory extension, and
only the request's description crosses the gRPC socket. Batching across streams is the server's (dynamic
batching); this client sends what the infer stage gathered.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import numpy as np

from engines.meta import META_KEY, MetadataError, ModelMeta
from engines.runtime.base import BackendUnavailable, ModelFileError, Runtime, ShapeError
from engines.runtime.inputs import DEPTH, IMAGE, IMAGES, Batch, as_inputs, feed, is_rgbd, layout

SCHEME = "triton://"
DEFAULT_PORT = 8001
_region_ids = itertools.count()


class TritonURIError(ModelFileError):
    """A triton:// URI that cannot be parsed."""


def parse_uri(uri: str) -> dict:
    """``triton://host:port/model?version=&shm=&timeout=`` -> its parts; TritonURIError says what is wrong."""
    if not uri.startswith(SCHEME):
        raise TritonURIError(f"{uri}: not a triton:// URI (triton://HOST:PORT/MODEL)")
    parts = urlsplit(uri)
    model = parts.path.strip("/")
    if not parts.hostname or not model or "/" in model:
        raise TritonURIError(f"{uri}: expected triton://HOST:PORT/MODEL (one model name after the port)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise TritonURIError(f"{uri}: the port is not a number 1-65535") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"version", "shm", "timeout"})
    if unknown:
        raise TritonURIError(f"{uri}: unknown option '{unknown[0]}' (version, shm, timeout)")
    shm = query.get("shm", "auto")
    if shm not in ("auto", "on", "off"):
        raise TritonURIError(f"{uri}: shm={shm!r} must be auto, on or off")
    try:
        timeout = float(query.get("timeout", "30"))
        if timeout <= 0:
            raise ValueError
    except ValueError:
        raise TritonURIError(
            f"{uri}: timeout={query['timeout']!r} must be a positive number of seconds"
        ) from None
    version = query.get("version", "")
    if version and not version.isdigit():
        raise TritonURIError(f"{uri}: version={version!r} must be a whole number")
    return {
        "host": parts.hostname,
        "port": port,
        "model": model,
        "version": version,
        "shm": shm,
        "timeout": timeout,
    }


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ShmRegion:
    """One POSIX shared-memory region registered with the server (system shared-memory extension). Named
    ``segstream-<pid>-triton-<n>`` so that stream.shm's orphan sweep removes what a killed client left."""

    def __init__(self, client, size: int, role: str) -> None:
        import tritonclient.utils.shared_memory as shm

        self.shm = shm
        self.client = client
        self.size = size
        self.name = f"segstream-{os.getpid()}-triton-{next(_region_ids)}-{role}"
        self.handle = shm.create_shared_memory_region(self.name, "/" + self.name, size)
        try:
            client.register_system_shared_memory(self.name, "/" + self.name, size)
        except Exception:
            shm.destroy_shared_memory_region(self.handle)
            raise

    def close(self) -> None:
        try:
            self.client.unregister_system_shared_memory(self.name)
        except Exception:  # noqa: BLE001 - the server may be gone already; the region is ours to remove
            pass
        self.shm.destroy_shared_memory_region(self.handle)


class TritonRuntime(Runtime):
    """A model served by Triton, behind the same ``prepare``/``run`` as a local model."""

    backend = "triton"

    def __init__(self, uri: str, device: str = "auto", threads: int | None = None, **_: object) -> None:
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise BackendUnavailable(
                "the triton:// backend needs tritonclient: pip install 'segstream[triton]'"
            ) from None
        self.uri = uri
        opts = parse_uri(uri)
        self.model, self.version, self.timeout = opts["model"], opts["version"], opts["timeout"]
        self.url = f"{opts['host']}:{opts['port']}"
        self._grpc, self._error = grpcclient, InferenceServerException
        self.client = grpcclient.InferenceServerClient(url=self.url)
        try:
            live = self.client.is_server_live(client_timeout=self.timeout)
        except InferenceServerException as e:
            raise BackendUnavailable(f"{uri}: no Triton server answers at {self.url} ({_why(e)})") from None
        if not live:
            raise BackendUnavailable(f"{uri}: the Triton server at {self.url} is not live")
        try:
            ready = self.client.is_model_ready(self.model, self.version, client_timeout=self.timeout)
        except InferenceServerException as e:
            raise BackendUnavailable(f"{uri}: {_why(e)}") from None
        if not ready:
            names = self._model_names()
            raise ModelFileError(
                f"{uri}: the server at {self.url} has no ready model '{self.model}'"
                + (f" (ready: {', '.join(names)})" if names else " (no model is ready)")
            )
        config = self.client.get_model_config(self.model, self.version, as_json=True)["config"]
        self.meta = self._read_meta(config)
        md = self.client.get_model_metadata(self.model, self.version, as_json=True)
        ins = {t["name"]: t for t in md.get("inputs", [])}
        outs = {t["name"]: t for t in md.get("outputs", [])}
        # 'images', or an RGB-D model's 'image' + 'depth' (engines.runtime.inputs)
        wanted = [IMAGE, DEPTH] if is_rgbd(self.meta) and IMAGES not in ins else [IMAGES]
        if any(n not in ins or ins[n].get("datatype") != "FP32" for n in wanted):
            names = " and ".join(f"'{n}'" for n in wanted)
            raise ModelFileError(
                f"{uri}: the served model needs FP32 input(s) named {names} (has {sorted(ins)})"
            )
        self.input_names = wanted
        if "ids" not in outs or outs["ids"].get("datatype") != "UINT8":
            raise ModelFileError(
                f"{uri}: the served model needs a UINT8 output named 'ids' (has {sorted(outs)})"
            )
        self.has_confidence = "confidence" in outs
        served_batch = int(config.get("max_batch_size") or 0)
        if served_batch > 0:
            self.meta = replace(self.meta, max_batch=min(self.meta.max_batch, served_batch))
        else:  # the model takes one frame per request (no batch dimension)
            raise ModelFileError(
                f"{uri}: the served model has max_batch_size 0; segstream sends N x C x H x W"
            )
        self.use_shm = opts["shm"] == "on" or (opts["shm"] == "auto" and is_loopback(opts["host"]))
        self.device = f"triton:{self.url}"
        self._in: _ShmRegion | None = None
        self._out: _ShmRegion | None = None

    def _model_names(self) -> list[str]:
        try:
            index = self.client.get_model_repository_index(as_json=True).get("models", [])
        except self._error:
            return []
        return sorted(m["name"] for m in index if m.get("state") == "READY")

    def _read_meta(self, config: dict) -> ModelMeta:
        param = config.get("parameters", {}).get(META_KEY, {}).get("string_value")
        if not param:
            raise ModelFileError(
                f"{self.uri}: the model config has no '{META_KEY}' parameter (serve a repository written by "
                "`segstream export --triton-repo`, which puts the classes and normalization there)"
            )
        try:
            return ModelMeta.from_json(param)
        except MetadataError as e:
            raise ModelFileError(f"{self.uri}: {e}") from None

    def _regions(self, in_bytes: int, out_bytes: int) -> tuple[_ShmRegion, _ShmRegion]:
        """Input/output regions big enough for a max-size batch, made once (registering costs a round
        trip); remade only if a larger batch comes."""
        if self._in is None or self._in.size < in_bytes:
            if self._in is not None:
                self._in.close()
            self._in = _ShmRegion(self.client, in_bytes, "in")
        if self._out is None or self._out.size < out_bytes:
            if self._out is not None:
                self._out.close()
            self._out = _ShmRegion(self.client, out_bytes, "out")
        return self._in, self._out

    def run(self, batch: Batch, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        inputs = as_inputs(batch, self.meta)
        for name, channels in layout(self.meta):
            x = inputs[name]
            if x.ndim != 4 or x.shape[1] != channels:
                raise ShapeError(f"'{name}' must be N x {channels} x H x W float32, got {x.shape}")
        xs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed(inputs, self.input_names).items()}
        n, _, h, w = next(iter(xs.values())).shape
        if n > self.meta.max_batch:
            raise ShapeError(f"batch of {n} exceeds the served model's max batch {self.meta.max_batch}")
        if confidence and not self.has_confidence:
            raise ModelFileError(f"{self.uri}: the served model has no 'confidence' output")
        names = ["ids", "confidence"] if confidence else ["ids"]
        inps = [self._grpc.InferInput(k, list(x.shape), "FP32") for k, x in xs.items()]
        outputs = [self._grpc.InferRequestedOutput(name) for name in names]
        plane = n * h * w  # one uint8 map per frame and output
        if self.use_shm:
            total = sum(x.nbytes for x in xs.values())  # the inputs one after the other in one region
            rin, rout = self._regions(total, 2 * self.meta.max_batch * h * w)
            rin.shm.set_shared_memory_region(rin.handle, list(xs.values()))
            at = 0
            for inp, x in zip(inps, xs.values(), strict=True):
                inp.set_shared_memory(rin.name, x.nbytes, offset=at)
                at += x.nbytes
            for i, out in enumerate(outputs):
                out.set_shared_memory(rout.name, plane, offset=i * plane)
        else:
            for inp, x in zip(inps, xs.values(), strict=True):
                inp.set_data_from_numpy(x)
        try:
            res = self.client.infer(
                self.model, inps, model_version=self.version, outputs=outputs, client_timeout=self.timeout
            )
        except self._error as e:
            raise BackendUnavailable(f"{self.uri}: inference failed ({_why(e)})") from None
        got = []
        for i, name in enumerate(names):
            if self.use_shm:
                shape = res.get_output(name).shape
                arr = rout.shm.get_contents_as_numpy(rout.handle, np.uint8, list(shape), offset=i * plane)
                got.append(np.array(arr))  # a copy: the region is reused by the next request
            else:
                got.append(res.as_numpy(name))
        ids = got[0]
        if ids is None or ids.shape[0] != n or ids.dtype != np.uint8:
            raise ModelFileError(
                f"{self.uri}: 'ids' came back as {getattr(ids, 'shape', None)}, expected {n} maps"
            )
        return ids, (got[1] if confidence else None)

    def close(self) -> None:
        for region in (self._in, self._out):
            if region is not None:
                region.close()
        self._in = self._out = None
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a channel to a server that is gone
            pass


def _why(e: Exception) -> str:
    msg = getattr(e, "message", None)
    text = str(msg() if callable(msg) else e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
