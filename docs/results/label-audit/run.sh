#!/usr/bin/env bash
# How well each method's final model finds the flipped training labels (the label audit's AUROC), at 20 and 40 %
# symmetric noise, on the embedded synthetic faces (the default preset) and on a FER2013 subset (the settings of
# docs/results/fer2013). Resumable: the same command finishes an interrupted sitting.
#
#   bash docs/results/label-audit/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
FER="${FER:-$repo/../shared/data/fer2013}"
SMEC="${SMEC:-smec-fast}"
$SMEC sweep --methods ce,elr,eac,smec --noise-rates 0.2,0.4 --seeds 0 --out "$here/embedded" --progress false
$SMEC sweep --methods ce,elr,eac,smec --noise-rates 0.2,0.4 --seeds 0 --out "$here/fer2013" --dataset folder \
  --data "$FER" --image-size 48 --max-train-samples 3000 --max-test-samples 1000 --epochs 8 --batch-size 32 \
  --lr 1e-3 --con-warmup-epochs 2 --num-workers 2 --progress false
