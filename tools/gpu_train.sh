#!/usr/bin/env bash
# Trains segstream's models on a lent GPU machine in one time-boxed call, several runs side by side on the
# one GPU (small nets leave it mostly idle, so parallel runs cost little), and writes the results to $OUT.
#
#   bash tools/gpu_train.sh DATA_ROOT MINUTES
#
# DATA_ROOT holds camvid/{train,val} (a copy of ../shared/data/camvid carried to the machine).
# Every run is a plain `segstream train` command: the recipe of a shipped model is the line below.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?DATA_ROOT}
MIN=${2:-6}
OUT=${OUT:-out}
RUNS=${RUNS_DIR:-.gpu/runs}
QUICK=${QUICK:-0}   # QUICK=1: a few images on the CPU, to check this script itself
mkdir -p "$RUNS" "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2

# Smoke test first: a broken training path should cost seconds of the lease, not minutes.
if [ "$QUICK" != 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if ! timeout 120 python3 -m stream train --data "$DATA/camvid/train" --val-data "$DATA/camvid/val" --limit 8 \
      --epochs 2 --batch-size 4 --size 480x360 --device cuda --out "$RUNS/smoke" >"$RUNS/smoke.log" 2>&1; then
    tail -n 40 "$RUNS/smoke.log"; cp "$RUNS/smoke.log" "$OUT/"; exit 1
  fi
  tail -n 3 "$RUNS/smoke.log"
fi

COMMON=(--val-data "$DATA/camvid/val" --size 480x360 --batch-size 16 --optimizer adamw --lr 0.002
        --weight-decay 0.01 --schedule poly --schedule-time --warmup-epochs 5 --loss ce --class-weights sqrt
        --val-every 5 --seed 1 --precision auto)
if [ "$QUICK" = 1 ]; then COMMON+=(--limit 4 --device cpu); fi

TRAIN=(--data "$DATA/camvid/train")
TRAINVAL=(--data "$DATA/camvid/train" --data "$DATA/camvid/val")

run() {  # name, then train arguments
  local name=$1; shift
  python3 -m stream train --out "$RUNS/$name" "$@" >"$RUNS/$name.log" 2>&1 &
}

# Long runs: the default-model candidates, each on train only (honest validation) and on train+val (shipped).
run fastscnn-w1-train    "${TRAIN[@]}"    "${COMMON[@]}" --arch fastscnn --width 1.0 --epochs 2000 --time-limit "$MIN"
run fastscnn-w1-trainval "${TRAINVAL[@]}" "${COMMON[@]}" --arch fastscnn --width 1.0 --epochs 2000 --time-limit "$MIN"
run fastscnn-w15-train   "${TRAIN[@]}"    "${COMMON[@]}" --arch fastscnn --width 1.5 --epochs 2000 --time-limit "$MIN"
run fastscnn-w15-trainval "${TRAINVAL[@]}" "${COMMON[@]}" --arch fastscnn --width 1.5 --epochs 2000 --time-limit "$MIN"
run fastscnn-w1-median   "${TRAIN[@]}"    "${COMMON[@]}" --arch fastscnn --width 1.0 --epochs 2000 --time-limit "$MIN" --class-weights median
# Architecture comparison: same epochs, same input size, same recipe.
CMP_EPOCHS=${CMP_EPOCHS:-60}
[ "$QUICK" = 1 ] && CMP_EPOCHS=1
for arch in bisenetv2 unet convpool; do
  run "cmp-$arch" "${TRAIN[@]}" "${COMMON[@]}" --arch "$arch" --epochs "$CMP_EPOCHS" --time-limit "$MIN"
done
wait
nvidia-smi --query-gpu=name,memory.used --format=csv > "$RUNS/gpu.txt" 2>&1 || true

# What comes back: the long runs' best weights one file each, everything else (logs, plots, configs) in one tarball.
for r in fastscnn-w1-train fastscnn-w1-trainval fastscnn-w15-train fastscnn-w15-trainval fastscnn-w1-median; do
  [ -f "$RUNS/$r/best.pt" ] && cp "$RUNS/$r/best.pt" "$OUT/$r.pt"
  [ "$r" != "${r%trainval}" ] && [ -f "$RUNS/$r/last.pt" ] && python3 - "$RUNS/$r/last.pt" "$OUT/$r-last.pt" <<'PY'
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
for k in ("optimizer", "scheduler", "scaler", "rng"):
    ck.pop(k, None)
torch.save(ck, sys.argv[2])
PY
done
tar -czf "$OUT/runs.tar.gz" --exclude='*.pt' -C "$RUNS" .
ls -la "$OUT"
