"""`segstream bench`: benchmarks by name (infer here; pipeline and transport from tools/ in a checkout)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

HELP = "benchmarks: infer (backends x precisions x sizes), pipeline, transport"
DESCRIPTION = (
    "Run a benchmark. `segstream bench infer --help` lists the inference benchmark's options; "
    "pipeline and transport run tools/bench_pipeline.py and tools/bench_transport.py of a source "
    "checkout with the arguments that follow."
)
TOOLS = Path(__file__).resolve().parents[2] / "tools"
# name -> (help, where main(argv) lives: a module name, or a tools/ script)
BENCHES = {
    "infer": ("inference latency/throughput per backend, precision, size and batch", "engines.runtime.bench"),
    "pipeline": (
        "`segstream run` vs the hand-written loop, whole processes; start-up; live latency",
        "tools/bench_pipeline.py",
    ),
    "transport": ("frame transport between processes", "tools/bench_transport.py"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "bench", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[0]}" for k, v in BENCHES.items())
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (see BENCH --help)")


def _main_of(target: str):
    from engines.errors import SegstreamError

    if not target.startswith("tools/"):
        return importlib.import_module(target).main
    path = TOOLS / target.split("/", 1)[1]
    if not path.is_file():
        raise SegstreamError(f"{path} not found: this benchmark runs from a source checkout")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def run(args: argparse.Namespace) -> int:
    return int(_main_of(BENCHES[args.bench][1])(list(args.args)) or 0)
