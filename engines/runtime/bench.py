"""Inference benchmark: every available backend x precision x resolution x batch, same model.

Times ``Runtime.run`` on a prepared batch (the model, the in-graph argmax/confidence and, on GPUs,
the host<->device copies and on-device normalization); frame preprocessing on the CPU is excluded
because it is the same for every backend. Latency p50/p99 after warm-up; throughput = frames/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engines.errors import SegstreamError
from engines.runtime.inputs import is_rgbd

SIZES = ((480, 360), (1024, 512), (1280, 720))
BATCHES = (1, 4)
BACKENDS = ("onnxruntime", "torch", "tensorrt")


@dataclass
class Case:
    backend: str
    device: str
    precision: str
    size: str  # WxH
    batch: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    fps: float | None = None
    iters: int = 0
    note: str = ""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_runtime(rt, batch: np.ndarray, warmup: int, iters: int, max_seconds: float) -> list[float]:
    for _ in range(warmup):
        rt.run(batch)
    times: list[float] = []
    t_end = time.perf_counter() + max_seconds
    while len(times) < iters and (len(times) < 5 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        rt.run(batch)  # returns host arrays, so GPU work is complete when it returns
        times.append(time.perf_counter() - t0)
    return times


def _frames(directory: str | None, count: int = 4) -> tuple[list[np.ndarray], str]:
    if directory:
        from engines.export import load_images

        return load_images(directory, count), f"images from {directory}"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8) for _ in range(count)], "random frames"


def _random_checkpoint(arch: str, root: Path) -> Path:
    """A checkpoint with random weights (timings do not depend on the weights)."""
    import torch

    from engines.meta import ClassTable, ModelMeta
    from engines.models import build_model
    from engines.runtime.torch import write_checkpoint

    names = tuple(f"class{i}" for i in range(11))
    palette = tuple((i * 20, 255 - i * 20, (i * 70) % 256) for i in range(11))
    meta = ModelMeta(arch=arch, classes=ClassTable(names, palette, ignore_index=None), input_size=(480, 360))
    args = {"num_classes": 11, "in_channels": 3, "dropout": 0.1}
    torch.manual_seed(0)
    net = build_model(arch, **args)
    return write_checkpoint(root / f"{arch}-random.pt", net, meta, args)


def _plan(backends: list[str], precisions: list[str], device: str) -> list[tuple[str, str, str]]:
    """(backend, device, precision) combinations to try; unavailable ones are reported, not hidden."""
    want_cpu = device in ("auto", "cpu")
    want_gpu = device == "cuda" or (device == "auto" and _gpu_name() is not None)
    plan = []
    for b in backends:
        if b == "onnxruntime":
            if want_cpu:
                plan += [(b, "cpu", p) for p in ("fp32", "int8") if p in precisions]
            if want_gpu:
                plan += [(b, "cuda", p) for p in ("fp32", "fp16") if p in precisions]
        elif b == "torch":
            if want_cpu:
                plan += [(b, "cpu", "fp32")] if "fp32" in precisions else []
            if want_gpu:
                plan += [(b, "cuda", p) for p in ("fp32", "fp16") if p in precisions]
        elif b == "tensorrt" and want_gpu:
            plan += [(b, "cuda", p) for p in ("fp32", "fp16", "int8") if p in precisions]
    return plan


class _Models:
    """Model files for each backend/precision, made once from the checkpoint (dynamic H/W ONNX)."""

    def __init__(
        self, checkpoint: Path, workdir: Path, calib: str | None, sizes, batches, quiet: bool
    ) -> None:
        self.checkpoint, self.workdir, self.calib = checkpoint, workdir, calib
        self.sizes, self.batches, self.quiet = sizes, batches, quiet
        self._cache: dict[str, Path] = {}

    def onnx(self, precision: str) -> Path:
        key = f"onnx-{precision}"
        if key not in self._cache:
            from engines.export import export_checkpoint

            if precision == "int8":
                if not self.calib:
                    raise SegstreamError("INT8 needs calibration images (--calib DIR)")
                from engines.quantize import quantize_model

                path = self.workdir / "model.int8.onnx"
                quantize_model(self.onnx("fp32"), path, self.calib, count=16)
            else:
                path = self.workdir / f"model.{precision}.onnx"
                rep = export_checkpoint(self.checkpoint, path, fp16=precision == "fp16")
                if not rep.dynamic_hw:
                    raise SegstreamError("the model exports with fixed H/W only; cannot bench several sizes")
            self._cache[key] = path
        return self._cache[key]

    def engine(self, precision: str) -> Path:
        key = f"engine-{precision}"
        if key not in self._cache:
            from engines.build import Profile, build_engine

            hs = [h for _, h in self.sizes]
            ws = [w for w, _ in self.sizes]
            w0, h0 = self.sizes[0]
            prof = Profile((1, min(hs), min(ws)), (1, h0, w0), (max(self.batches), max(hs), max(ws)))
            src = self.onnx("int8" if precision == "int8" else "fp32")
            path = self.workdir / f"model.{precision}.engine"
            build_engine(src, path, precision=precision, profile=prof)
            self._cache[key] = path
        return self._cache[key]


def _load(models: _Models, backend: str, device: str, precision: str, size, max_batch: int, threads):
    from engines.runtime.onnxruntime import OrtRuntime, providers_for
    from engines.runtime.tensorrt import TensorRTRuntime, _torch_cuda
    from engines.runtime.torch import TorchRuntime
    from engines.trt_compat import load_trt

    if backend == "onnxruntime":
        providers_for(device)  # BackendUnavailable before spending time on an export
        return OrtRuntime(
            models.onnx(precision), device=device, threads=threads, input_size=size, max_batch=max_batch
        )
    if backend == "torch":
        return TorchRuntime(
            models.checkpoint,
            device=device,
            threads=threads,
            fp16=precision == "fp16",
            input_size=size,
            max_batch=max_batch,
        )
    load_trt()
    _torch_cuda(device)
    return TensorRTRuntime(models.engine(precision), device=device, input_size=size)


def run_bench(
    checkpoint: Path,
    *,
    backends: list[str],
    precisions: list[str],
    device: str,
    sizes,
    batches,
    threads: int | None,
    warmup: int,
    iters: int,
    max_seconds: float,
    frames_dir: str | None,
    calib: str | None,
    workdir: Path,
    progress=None,
) -> tuple[list[Case], str]:
    frames, frames_src = _frames(frames_dir, max(batches))
    models = _Models(checkpoint, workdir, calib, sizes, batches, quiet=True)
    cases: list[Case] = []
    for backend, dev, prec in _plan(backends, precisions, device):
        for w, h in sizes:
            try:
                rt = _load(models, backend, dev, prec, (w, h), max(batches), threads)
            except SegstreamError as e:  # one row says why, for all sizes and batches
                cases.append(Case(backend, dev, prec, "all", 0, note=f"unavailable: {e}"))
                if progress:
                    progress(cases[-1])
                break
            for b in batches:
                chosen = frames[:b] if len(frames) >= b else (frames * b)[:b]
                # an RGB-D model takes a depth image per frame: a flat 2 m (the timing ignores values)
                depth = [np.full(f.shape[:2], 2000, np.uint16) for f in chosen] if is_rgbd(rt.meta) else None
                batch = rt.prepare(chosen, depth=depth)
                ts = time_runtime(rt, batch, warmup, iters, max_seconds)
                c = Case(
                    backend,
                    rt.device,
                    prec,
                    f"{w}x{h}",
                    b,
                    percentile(ts, 50) * 1e3,
                    percentile(ts, 99) * 1e3,
                    b / statistics.mean(ts),
                    len(ts),
                )
                cases.append(c)
                if progress:
                    progress(c)
            rt.close()
    return cases, frames_src


def ratios(cases: list[Case]) -> dict[str, float]:
    """ONNX Runtime vs eager PyTorch on CPU, FP32, batch 1, per size: torch p50 / ORT p50."""
    out = {}
    by = {(c.backend, c.device, c.precision, c.size, c.batch): c for c in cases if c.p50_ms}
    for (backend, dev, prec, size, b), c in by.items():
        if backend == "onnxruntime" and dev == "cpu" and prec == "fp32" and b == 1:
            t = by.get(("torch", "cpu", "fp32", size, 1))
            if t:
                out[size] = t.p50_ms / c.p50_ms
    return out


def print_table(cases: list[Case], r: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title)
    for col in ("backend", "device", "precision", "size", "batch", "p50 ms", "p99 ms", "frames/s", "n"):
        t.add_column(
            col, justify="right" if col in ("batch", "p50 ms", "p99 ms", "frames/s", "n") else "left"
        )
    for c in cases:
        if c.p50_ms is None:
            t.add_row(c.backend, c.device, c.precision, c.size, "-", "-", "-", "-", "0")
        else:
            t.add_row(
                c.backend,
                c.device,
                c.precision,
                c.size,
                str(c.batch),
                f"{c.p50_ms:.1f}",
                f"{c.p99_ms:.1f}",
                f"{c.fps:.1f}",
                str(c.iters),
            )
    con = Console(width=max(120, Console().width))
    con.print(t)
    for note in sorted({f"{c.backend}/{c.device}/{c.precision}: {c.note}" for c in cases if c.note}):
        con.print(f"[yellow]{escape(note)}[/]")
    if not any(c.device.startswith("cuda") for c in cases) and _gpu_name() is None:
        con.print("GPU backends not benched: no CUDA GPU visible (--device cuda lists why per backend)")
    for size, v in r.items():
        verdict = "meets" if v >= 1.5 else "misses"
        con.print(
            f"ONNX Runtime vs eager PyTorch (CPU, fp32, batch 1, {size}): {v:.2f}x "
            f"({verdict} the 1.5x target)"
        )


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise SegstreamError(f"--sizes '{text}': expected WxH[,WxH...], e.g. 480x360,1280x720") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint (.pt) to bench; default: --arch with random weights")
    p.add_argument(
        "--arch", default="fastscnn", help="architecture when no --model is given (default fastscnn)"
    )
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma list (default: all)")
    p.add_argument(
        "--precisions", default="fp32,fp16", help="comma list of fp32,fp16,int8 (default fp32,fp16)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: all available")
    p.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES), help="WxH list")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (default 1,4)")
    p.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime and PyTorch (default: theirs)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per case (default 5)")
    p.add_argument("--iters", type=int, default=30, help="timed runs per case (default 30)")
    p.add_argument("--max-seconds", type=float, default=6.0, help="stop a case after this long (min 5 runs)")
    p.add_argument("--frames", metavar="DIR", help="images to feed (default: random frames)")
    p.add_argument("--calib", metavar="DIR", help="calibration images, needed for int8")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--quick", action="store_true", help="smallest size, batch 1, 3 runs: a smoke test")


def run(args: argparse.Namespace) -> int:
    sizes = _parse_sizes(args.sizes)
    batches = [int(b) for b in str(args.batches).split(",")]
    warmup, iters, max_s = args.warmup, args.iters, args.max_seconds
    if args.quick:
        sizes, batches, warmup, iters, max_s = [min(sizes, key=lambda s: s[0] * s[1])], [1], 1, 3, 1.0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise SegstreamError(
            f"--backends: unknown {', '.join(sorted(unknown))} (valid: {', '.join(BACKENDS)})"
        )
    precisions = [p.strip() for p in args.precisions.split(",")]
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as tmp:
        ckpt = Path(args.model) if args.model else _random_checkpoint(args.arch, Path(tmp))
        t0 = time.time()
        cases, frames_src = run_bench(
            ckpt,
            backends=backends,
            precisions=precisions,
            device=args.device,
            sizes=sizes,
            batches=batches,
            threads=args.threads,
            warmup=warmup,
            iters=iters,
            max_seconds=max_s,
            frames_dir=args.frames,
            calib=args.calib,
            workdir=Path(tmp),
        )
    r = ratios(cases)
    title = (
        f"segstream bench infer: {ckpt.name if args.model else args.arch + ' (random weights)'}, {frames_src}"
    )
    print_table(cases, r, title)
    if args.json:
        doc = {
            "command": " ".join(sys.argv),
            "model": str(args.model or f"{args.arch} (random weights)"),
            "host": {
                "machine": platform.machine(),
                "processor": platform.processor(),
                "python": platform.python_version(),
            },
            "gpu": _gpu_name(),
            "seconds": round(time.time() - t0, 1),
            "results": [asdict(c) for c in cases],
            "ort_vs_torch_cpu_batch1": r,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


def _gpu_name() -> str | None:
    from engines.build import gpu_info

    g = gpu_info()
    return f"{g['name']} (compute capability {g['compute_capability']})" if g else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="segstream bench infer", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except SegstreamError as e:
        print(f"bench infer: error: {e}", file=sys.stderr)
        return 2
