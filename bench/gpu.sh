#!/usr/bin/env bash
# Every GPU check of the project in one call on a lent GPU machine, within its budget:
#   1. the Triton kernel tests on CUDA and the kernel benchmark (bench/gpu_kernels.sh),
#   2. the training-step benchmark, CE vs SMEC, plain vs eager vs compiled, 224 px, batch 64 and 256, and
#      from the loaders when FER_DIR is set (bench_train.py),
#   3. the loader benchmark with GPU rows (bench/gpu_data.sh), when FER_DIR names a carried FER2013 copy,
#   4. how far compiled training-step gradients drift from float64 next to eager's (bench/check_compile.py).
# Results go to one archive, $OUT/gpu-results.tar.gz, and a summary, $OUT/summary.txt (the device tool
# brings back at most 8 files). Set PYTHON, FER_DIR, WHEELS_DIR, LIMIT as the two scripts describe.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
work="$(mktemp -d)"
PY="${PYTHON:-python3}"

OUT="$work/kernels" bash bench/gpu_kernels.sh > "$work/kernels.log" 2>&1
kernels_rc=$?
# gpu_kernels.sh made smec_fast importable (an editable install or a link folder); bench_train needs the same.
"$PY" -c "import smec_fast.kernels" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
  > "$work/pip.log" 2>&1
"$PY" bench/bench_train.py --device cuda ${FER_DIR:+--data "$FER_DIR"} --out "$work/train_cuda.json" \
  > "$work/train.log" 2>&1
train_rc=$?
"$PY" bench/check_compile.py --device cuda --out "$work/compile_check_cuda.json" > "$work/compile.log" 2>&1
compile_rc=$?
data_rc=skipped
if [ -n "${FER_DIR:-}" ]; then
  OUT="$work/data" bash bench/gpu_data.sh > "$work/data.log" 2>&1
  data_rc=$?
fi
{
  echo "kernels $kernels_rc, train $train_rc, compile check $compile_rc, data $data_rc"
  tail -n 25 "$work/kernels.log"
  cat "$work/train.log"
  grep -v '^W' "$work/compile.log"
  [ -f "$work/data.log" ] && tail -n 12 "$work/data.log"
} > "$OUT/summary.txt" 2>&1
tar -C "$work" -czf "$OUT/gpu-results.tar.gz" .
cat "$OUT/summary.txt"
