#!/usr/bin/env bash
# GPU check for the inference runtimes, for a lent GPU machine (no network; torch with CUDA, onnx,
# onnxruntime, opencv, rich; no pyzmq/av/tensorrt needed — nothing on this path imports them).
#
#   bash tools/gpu_check.sh [MODEL.pt]        # results under $OUT (default: ./gpu-results)
#
# Writes 3 files: runtimes_pytest.txt (tests/gpu), runtimes_bench.txt (doctor + bench table),
# runtimes_bench.json. Without MODEL.pt the tests use CamVid beside the repo (or random weights)
# and the bench a random-weight fastscnn (timings do not depend on the weights).
# Exit status: non-zero when the GPU tests fail; the bench still runs.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-results}"
MODEL="${1:-}"
mkdir -p "$OUT"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-python3}"
model_args=()
if [ -n "$MODEL" ]; then
  export SEGSTREAM_TEST_MODEL="$MODEL"
  model_args=(--model "$MODEL")
fi

echo "== gpu tests (tests/gpu)"
timeout 600 "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/runtimes_pytest.txt"
tests_rc=${PIPESTATUS[0]}

echo "== doctor + inference bench (torch CUDA fp32/fp16, ONNX Runtime, TensorRT where installed)"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c "
from stream.commands.doctor import collect
for c, ok, d in collect():
    print(f'{c:18} {\"yes\" if ok else \"no \"}  {d}')
"
  COLUMNS=140 timeout 900 "$PY" tools/bench_infer.py "${model_args[@]}" --device cuda \
    --precisions fp32,fp16 --batches 1,4 --json "$OUT/runtimes_bench.json"
  echo "-- CPU baseline on this machine (ONNX Runtime vs eager PyTorch, batch 1)"
  COLUMNS=140 timeout 300 "$PY" tools/bench_infer.py "${model_args[@]}" --device cpu \
    --backends onnxruntime,torch --precisions fp32 --batches 1 --sizes 480x360,1280x720 --iters 20
} 2>&1 | tee "$OUT/runtimes_bench.txt"
exit "$tests_rc"
