#!/usr/bin/env bash
# GPU check for the inference runtimes, for a lent GPU machine (no network; torch with CUDA, onnx,
# onnxruntime, opencv, rich; no pyzmq/av/tensorrt needed — nothing on this path imports them).
#
#   bash tools/gpu_check.sh [MODEL.pt]        # results under $OUT (default: ./gpu-results)
#
# Writes runtimes_gpu.txt (tests/gpu, doctor, bench table), runtimes_bench.json,
# runtimes_graphs_<gpu>.txt (torch CUDA eager vs CUDA graphs, FP32/FP16, batch 1 and 4 at 480x360) and,
# with pyzmq/PyAV, the pipeline files: 8 in all, the most a device run brings back. Without MODEL.pt the
# tests use CamVid beside the repo (or random weights) and the benches a random-weight fastscnn (timings
# do not depend on the weights).
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
timeout 600 "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/runtimes_gpu.txt"
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
} 2>&1 | tee -a "$OUT/runtimes_gpu.txt"

# CUDA graphs vs eager (engines/runtime/torch.py): the launch-bound batch-1 case of issue 11 (target:
# batch 1 at 480x360 <= 1.5 ms). Under a minute by its limits (3 s a case, 8 cases); not yet run.
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
gpu="$(printf '%s' "${gpu:-unknown-gpu}" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/-*$//')"
echo "== torch CUDA: eager vs CUDA graphs (fp32, fp16; batch 1, 4; 480x360)"
COLUMNS=140 timeout 300 "$PY" tools/bench_infer.py "${model_args[@]}" --graphs --precisions fp32,fp16 \
  --batches 1,4 --sizes 480x360 --iters 300 2>&1 | tee "$OUT/runtimes_graphs_${gpu}.txt"

# The pipeline on that machine: needs pyzmq and PyAV, which its image lacks. Carry their wheels (cp312,
# manylinux x86_64) in .whl/ and they are installed into /tmp/site first; numba and llvmlite wheels there
# too let the mask publisher's benchmark run (issue 17: its cost where inference is on the GPU).
echo "== pipeline bench (transport; torch CUDA and ONNX Runtime CPU, bundled model and clip)"
if ls .whl/pyzmq-*.whl .whl/av-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/pyzmq-*.whl .whl/av-*.whl $(ls .whl/numba-*.whl .whl/llvmlite-*.whl 2>/dev/null) \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
if "$PY" -c "import zmq, av" 2>/dev/null; then
  timeout 70 "$PY" tools/bench_transport.py --seconds 1 2>&1 | tee "$OUT/transport.txt"
  # PyTorch CUDA pipeline on the bundled clip (whole process, default flags otherwise)
  timeout 200 "$PY" -m stream run stream/assets/sample.mp4 --model stream/assets/default.pt --device cuda \
    --sink /tmp/pipeline_torch_cuda.mp4 --no-progress --stats-json "$OUT/pipeline_torch_cuda.json" 2>&1 \
    | tee "$OUT/pipeline_torch_cuda.txt"
  # the mask publisher's cost with inference on the GPU: publishing nothing vs polygons / coco-rle to 4
  # subscribers, whole runs (appended to the torch CUDA file: a device run brings back 8 files at most)
  if "$PY" -c "import numba" 2>/dev/null; then
    COLUMNS=220 timeout 300 "$PY" tools/bench_publish.py pipeline --model stream/assets/default.pt \
      --device cuda --repeat 2 2>&1 | tee -a "$OUT/pipeline_torch_cuda.txt"
  else
    echo "publish bench skipped: numba not importable (carry its and llvmlite's wheels in .whl/)"
  fi
  # ONNX Runtime CPU pipeline vs the hand-written loop, whole processes (tools/bench_pipeline.py)
  timeout 400 "$PY" tools/bench_pipeline.py --repeat 3 --live-seconds 5 \
    --json "$OUT/pipeline_ort_cpu.json" 2>&1 | tee "$OUT/pipeline_ort_cpu.txt"
  ls /dev/shm | grep segstream || echo "no /dev/shm leftovers"
else
  echo "pipeline bench skipped: pyzmq/PyAV not importable (carry their wheels in .whl/)"
fi
exit "$tests_rc"
