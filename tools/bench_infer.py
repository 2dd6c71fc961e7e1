"""Inference benchmark: each available backend and precision at 480x360, 1024x512, 1280x720, batch 1 and 4.

    python tools/bench_infer.py [--model CKPT.pt] [--device cpu|cuda] [--threads N] [--json OUT] [--quick]

Same as `segstream bench infer`. Prints p50/p99 latency and frames/s after warm-up, and the ONNX Runtime vs
eager PyTorch ratio on CPU at batch 1 (target >= 1.5x). Real frames: --frames DIR (default: CamVid val
beside the repo when present).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_FRAMES = ROOT.parent / "shared" / "data" / "camvid" / "val" / "images"


def main(argv: list[str] | None = None) -> int:
    from engines.runtime.bench import main as bench_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--frames" not in argv and DEFAULT_FRAMES.is_dir():
        argv += ["--frames", str(DEFAULT_FRAMES)]
    return bench_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
