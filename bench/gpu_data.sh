#!/usr/bin/env bash
# Data-loader benchmark on a GPU machine: torch / dali / cached, CPU and GPU rows side by side in one run,
# on all 28,709 FER2013 training images at 112 and 224. Writes $OUT/data_gpu.json (the rows), the printed
# table ($OUT/data_gpu.txt) and the GPU's description ($OUT/gpu.txt).
#
# Run from anywhere; it changes to the repository root. Settings (environment):
#   OUT          folder for the results (required)
#   PYTHON       interpreter with torch and torchvision (default: python3)
#   FER_DIR      FER2013 class-folder dataset (default: ../shared/data/fer2013, else ./shared/data/fer2013;
#                a device machine gets only the repository, so copy the dataset into a carried folder)
#   WHEELS_DIR   folder of wheels to install NVIDIA DALI from when it is missing (no network needed);
#                without DALI the dali rows are left out
#   NUM_WORKERS  DataLoader workers = DALI threads = cache decoding threads (default: 8)
#   LIMIT        first N training images, 0 for all (default: 0)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the folder for the results}"
PYTHON=${PYTHON:-python3}
NUM_WORKERS=${NUM_WORKERS:-8}
LIMIT=${LIMIT:-0}
if [ -z "${FER_DIR:-}" ]; then
  for candidate in ../shared/data/fer2013 shared/data/fer2013; do
    if [ -d "$candidate/train" ]; then FER_DIR=$candidate; break; fi
  done
fi
: "${FER_DIR:?FER2013 not found: set FER_DIR}"
mkdir -p "$OUT"

if ! "$PYTHON" -c "import nvidia.dali" 2>/dev/null; then
  if [ -n "${WHEELS_DIR:-}" ]; then
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS_DIR" nvidia-dali-cuda130
  else
    echo "NVIDIA DALI is not installed and WHEELS_DIR is not set: no dali rows" >&2
  fi
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true
"$PYTHON" bench/bench_data.py --data "$FER_DIR" --limit "$LIMIT" --sizes 112 224 --batch-size 64 \
  --num-workers "$NUM_WORKERS" --epochs 3 --devices cpu,cuda --out "$OUT/data_gpu.json" | tee "$OUT/data_gpu.txt"
