#!/usr/bin/env bash
# After a held-out-drive run (tools/train_cpu_heldout.sh): export its best checkpoint to ONNX, evaluate it
# on the held-out drive only and on every drive (by drive), measure bare ONNX Runtime speed (2 threads,
# batch 1, 480x360) alternately with the bundled default model, and copy config, log and plots to docs.
#
#   bash tools/train_finish_heldout.sh RUN_DIR [DRIVE] [ROUNDS]
#
# Writes RUN_DIR/best.onnx, RUN_DIR/eval-DRIVE.json, RUN_DIR/eval-by-drive.json, RUN_DIR/bench-*.json and
# docs/training/NAME/ (NAME = the run folder's name). Never touches stream/assets.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?RUN_DIR}; DRIVE=${2:-0001TP}; ROUNDS=${3:-3}
DATA=${DATA:-../shared/data/camvid}
NAME=$(basename "$RUN")
python3 -m stream export "$RUN/best.pt" -o "$RUN/best.onnx" --verify-data "$DATA/train"
python3 -m stream eval --model "$RUN/best.onnx" --data "$DATA/train" --drive "$DRIVE" --by-drive --threads 2 \
  --json "$RUN/eval-$DRIVE.json"
python3 -m stream eval --model "$RUN/best.onnx" --data "$DATA/train" --by-drive --threads 2 \
  --json "$RUN/eval-by-drive.json"
# speed: the two models alternate, so both see the same load of a shared machine
for r in $(seq 1 "$ROUNDS"); do
  for m in stream/assets/default.pt "$RUN/best.pt"; do
    tag=$(basename "$(dirname "$m")")-$(basename "$m" .pt)
    python3 tools/bench_infer.py --model "$m" --backends onnxruntime --device cpu --sizes 480x360 \
      --batches 1 --threads 2 --iters 100 --max-seconds 10 --json "$RUN/bench-$tag-$r.json" | tail -n 3
  done
done
mkdir -p "docs/training/$NAME"
cp "$RUN"/config.json "$RUN"/log.jsonl "$RUN"/*.png "$RUN"/eval-*.json "$RUN"/bench-*.json "docs/training/$NAME/" 2>/dev/null || true
echo "copied to docs/training/$NAME"
