"""`segstream doctor`: which inference backends, GPUs and TensorRT versions are usable here, and why not."""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess

HELP = "report usable backends (ONNX Runtime, PyTorch, TensorRT), GPUs and versions, and why not"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _onnxruntime() -> tuple[str, bool, str]:
    try:
        ort = importlib.import_module("onnxruntime")
    except Exception as e:  # noqa: BLE001
        return "onnxruntime", False, f"not importable: {e}"
    prov = ort.get_available_providers()
    gpu = [p for p in prov if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    note = f"{ort.__version__}; providers: {', '.join(prov)}"
    if not gpu:
        note += " (CPU only: install onnxruntime-gpu for CUDA)"
    return "onnxruntime", True, note


def _torch() -> list[tuple[str, bool, str]]:
    try:
        torch = importlib.import_module("torch")
    except Exception as e:  # noqa: BLE001
        return [
            ("torch", False, f"not importable ({e}); needed for .pt models: pip install 'segstream[train]'")
        ]
    rows = [("torch (CPU)", True, f"{torch.__version__}, {torch.get_num_threads()} threads")]
    if torch.version.cuda is None:
        rows.append(("torch (CUDA)", False, f"{torch.__version__} is a CPU-only build"))
    elif not torch.cuda.is_available():
        rows.append(("torch (CUDA)", False, f"CUDA {torch.version.cuda} build, but no usable GPU/driver"))
    else:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cap = "{}.{}".format(*torch.cuda.get_device_capability(0))
        rows.append(("torch (CUDA)", True, f"CUDA {torch.version.cuda}; {', '.join(names)} (sm {cap})"))
    return rows


def _tensorrt() -> list[tuple[str, bool, str]]:
    from engines.build import RTX_CAPABILITIES, gpu_info

    gpu = gpu_info()
    rows = []
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            rows.append((name, False, f"not installed ({type(e).__name__})"))
            continue
        ver = getattr(mod, "__version__", "?")
        if gpu is None:
            rows.append((name, False, f"{ver}: can build engines here, but running one needs a CUDA GPU"))
        elif name == "tensorrt_rtx" and gpu["compute_capability"] not in RTX_CAPABILITIES:
            rows.append((name, False, f"{ver}: builds only; {gpu['name']} is not an RTX-class GPU"))
        else:
            try:
                importlib.import_module("torch").cuda.is_available()
                rows.append((name, True, f"{ver}; GPU {gpu['name']} (sm {gpu['compute_capability']})"))
            except ImportError:
                rows.append((name, False, f"{ver}: the runtime needs torch (CUDA) for device memory"))
    return rows


def _nvidia_smi() -> tuple[str, bool, str]:
    if not shutil.which("nvidia-smi"):
        return "GPU (nvidia-smi)", False, "nvidia-smi not found: no NVIDIA driver on this machine"
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return "GPU (nvidia-smi)", False, f"nvidia-smi failed: {e}"
    if out.returncode != 0:
        return "GPU (nvidia-smi)", False, (out.stderr or out.stdout).strip().splitlines()[0]
    return "GPU (nvidia-smi)", True, "; ".join(out.stdout.strip().splitlines())


def collect() -> list[tuple[str, bool, str]]:
    return [_onnxruntime(), *_torch(), *_tensorrt(), _nvidia_smi()]


def run(args: argparse.Namespace) -> int:
    rows = collect()
    if args.json:
        import json

        print(json.dumps([{"component": c, "usable": ok, "detail": d} for c, ok, d in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="segstream doctor")
    t.add_column("component")
    t.add_column("usable")
    t.add_column("version / why not")
    for c, ok, d in rows:
        t.add_row(escape(c), "[green]yes[/]" if ok else "[red]no[/]", escape(d))
    Console(width=max(120, Console().width)).print(t)
    return 0
