"""One import for TensorRT: the real ``tensorrt`` first, then ``tensorrt_rtx`` (same Python API).

The two differ where segstream cares: TensorRT-RTX networks are strongly typed (precision comes from
the ONNX model's types and Q/DQ nodes; no FP16/INT8 builder flags) and its timing cache is a no-op.
Everything else (builder, parser, runtime, tensor-address execution) is shared.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from engines.runtime.base import BackendUnavailable

FLAVOURS = ("tensorrt", "tensorrt_rtx")


@dataclass(frozen=True)
class TRT:
    module: ModuleType
    flavour: str  # "tensorrt" | "tensorrt_rtx"
    version: str

    @property
    def strongly_typed(self) -> bool:
        """Precision follows the ONNX types (TensorRT-RTX always; full TensorRT has builder flags)."""
        return self.flavour == "tensorrt_rtx" or not hasattr(self.module.BuilderFlag, "FP16")

    @property
    def has_timing_cache(self) -> bool:
        return self.flavour == "tensorrt"

    @property
    def label(self) -> str:
        return f"{'TensorRT-RTX' if self.flavour == 'tensorrt_rtx' else 'TensorRT'} {self.version}"

    def logger(self, verbose: bool = False):
        trt = self.module
        return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.ERROR)


_cached: TRT | None = None


def load_trt(prefer: str | None = None) -> TRT:
    """The importable TensorRT flavour (``prefer`` to force one); BackendUnavailable says why not."""
    global _cached
    if _cached is not None and prefer in (None, _cached.flavour):
        return _cached
    errors = []
    for name in (prefer,) if prefer else FLAVOURS:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a broken install raises OSError/ImportError alike
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        found = TRT(module=mod, flavour=name, version=str(getattr(mod, "__version__", "?")))
        if prefer is None:
            _cached = found
        return found
    raise BackendUnavailable(
        "TensorRT is not installed (" + "; ".join(errors) + "): pip install 'segstream[tensorrt]' "
        "(or 'segstream[tensorrt-rtx]' on RTX GPUs)"
    )


def versions() -> dict[str, str | None]:
    """{flavour: version or None}, without raising: for `segstream doctor`."""
    out: dict[str, str | None] = {}
    for name in FLAVOURS:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def capturing_logger(trt: TRT, verbose: bool = False):
    """A TensorRT logger that keeps error lines (to put in our own one-line errors) and prints
    everything only when verbose — no bare TensorRT log lines otherwise."""
    mod = trt.module
    sev = mod.ILogger.Severity
    errors_at = {sev.INTERNAL_ERROR, sev.ERROR}

    class _Logger(mod.ILogger):
        def __init__(self) -> None:
            mod.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: ANN001 - TensorRT's signature
            if severity in errors_at:
                self.errors.append(str(msg))
            if verbose:
                import sys

                print(f"[{trt.flavour}] {severity.name}: {msg}", file=sys.stderr)

        def summary(self, ignore: tuple[str, ...] = ()) -> str:
            keep = [e for e in self.errors if not any(i in e for i in ignore)]
            return " | ".join(keep[-3:]) if keep else "no error message from TensorRT"

    return _Logger()
