#!/usr/bin/env bash
# Every GPU check of the project in one call on a lent GPU machine, in order of value, each stage under its
# own time budget (bench/gpu_stage.py runs and records it). The budgets add up to 7.5 minutes (the set-up
# before them takes seconds), so a second call still fits in a 15-minute lease. As soon as a stage ends,
# whatever its outcome, its result lines are appended to $OUT/summary.txt, its rows and status written to its
# JSON file directly under $OUT, and $OUT/logs.tar.gz rewritten with every log so far: a run cut at any point
# keeps each earlier stage.
#
#   stage          budget  file               what
#   env              15 s  env.json           GPU, driver, versions, git SHA (+dirty); copy bandwidth, bf16 matmul rate
#   kernel-tests     75 s  kernels.json       Triton kernel tests on CUDA (compiled, not interpreted), every dtype
#   kernel-bench     60 s  kernels.json       fused ops: triton, eager, torch.compile; b 64/256; GB/s, launches
#   train            90 s  train.json         training step: CE vs SMEC, plain vs eager vs compiled, 224 px, b 64/256
#   compile-check    45 s  compile_check.json gradients against float64: eager/compiled x fp32/bf16, SMEC first
#   data             25 s  loaders.json       a RAF-DB-sized tree of synthetic 100 px JPEGs (smec-fast synth-rafdb)
#   loaders          35 s  loaders.json       cached, torch (and dali when importable) on the GPU, 224 px
#   e2e             105 s  e2e.json           smec-fast train, 2 epochs at 224 px: default vs plain way
#
# Within a stage the most wanted rows come first (the fused consistency forward + backward; plain and eager
# steps before the compiled ones, which spend most of their time compiling; the default end-to-end way).
#
# The machine (one H200) runs Python 3.12 with torch 2.11, torchvision 0.26 and triton 3.6, no DALI and no
# network: nothing is installed from a registry. smec_fast comes from this checkout: an existing install, else
# an editable install without dependencies, else a folder of links on PYTHONPATH.
#
#   OUT=DIR bash bench/gpu.sh              # on the GPU machine (the device tool sets OUT)
#   OUT=DIR bash bench/gpu.sh --dry-run    # every stage on the CPU at tiny sizes (the test suite runs this)
#
# Settings (environment): PYTHON (default python3); GPU_SH_FAIL=STAGE makes that stage fail, and GPU_SH_HANG=STAGE
# makes it hang after its work, past a budget of GPU_SH_HANG_BUDGET seconds (default 2), to check that both are
# recorded, that a cut stage keeps the rows it wrote, and that the next stage still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
: "${OUT:?set OUT to the folder for the results}"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
work="$(mktemp -d)"
PY="${PYTHON:-python3}"
PYFLAGS=()

# smec_fast.kernels lives in kernels/ and is mapped into the package by setup.py, so a bare checkout on the path
# does not provide it: use an install, else install this checkout editable (no network needed), else links.
if ! "$PY" -c "import smec_fast.kernels" >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" >"$work/pip.log" 2>&1 || true
  if ! "$PY" -c "import smec_fast.kernels" >/dev/null 2>&1; then
    need_links=1
  fi
fi
if [ -n "${need_links:-}" ]; then
  shim="$work/shim"
  mkdir -p "$shim/smec_fast"
  for f in "$REPO"/smec_fast/*; do
    [ "$(basename "$f")" = "__pycache__" ] || ln -s "$f" "$shim/smec_fast/"
  done
  ln -s "$REPO/kernels" "$shim/smec_fast/kernels"
  # -P (Python >= 3.11): no script or working directory first on the path, so the checkout's own smec_fast/
  # (without kernels/) cannot shadow the links; bench/ then comes from PYTHONPATH.
  export PYTHONPATH="$shim:$REPO/bench${PYTHONPATH:+:$PYTHONPATH}"
  PYFLAGS=(-P)
fi
P=("$PY" ${PYFLAGS[@]+"${PYFLAGS[@]}"})  # the interpreter, with -P when the links are used

stage() {  # NAME BUDGET FILE COMMAND...
  local name=$1 budget=$2 file=$3
  shift 3
  if [ "${GPU_SH_FAIL:-}" = "$name" ]; then
    set -- bash -c 'echo "this stage was made to fail (GPU_SH_FAIL)" >&2; exit 3'
  fi
  if [ "${GPU_SH_HANG:-}" = "$name" ]; then  # the stage's own work, then a hang
    budget=${GPU_SH_HANG_BUDGET:-2}
    set -- bash -c '"$@" && sleep 600' hang "$@"
  fi
  "$PY" "$REPO/bench/gpu_stage.py" --stage "$name" --budget "$budget" --file "$OUT/$file" --work "$work" -- "$@"
}

dali=""
"${P[@]}" -c "import nvidia.dali" >/dev/null 2>&1 && dali=",dali"
rafdb="$work/rafdb"
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
  dev=cpu
  stage env 20 env.json "${P[@]}" bench/gpu_env.py --device cpu --small --out @ROWS@
  stage kernel-tests 80 kernels.json env TORCH_DEVICE=cpu "${P[@]}" -m pytest -v -p no:cacheprovider \
    tests/test_kernels_triton.py \
    -k "(test_consistency_fp32_matches_reference and 1x1) or (test_elr_fp32_matches_reference and k7)"
  stage kernel-bench 60 kernels.json "${P[@]}" bench/bench_kernels.py --device cpu --batch 2 --size 32 --channels 16 \
    --modes fwd+bwd --providers torch --out @ROWS@
  stage train 80 train.json "${P[@]}" bench/bench_train.py --device cpu --image-size 40 --batch 2 --modes plain eager \
    --amp off --channels-last off --warmup 0 --steps 1 --repeats 1 --out @ROWS@
  stage compile-check 40 compile_check.json "${P[@]}" bench/check_compile.py --device cpu --methods ce --ways eager \
    --image-size 40 --batch-size 4 --out @ROWS@
  stage data 30 loaders.json "${P[@]}" -m smec_fast synth-rafdb "$rafdb" --train 128 --test 64 --workers 1 \
    --report @ROWS@
  stage loaders 40 loaders.json "${P[@]}" bench/bench_data.py --dataset rafdb --data "$rafdb" --devices cpu --sizes 32 \
    --batch-size 32 --num-workers 1 --epochs 1 --loaders "torch,cached$dali" --out @ROWS@
  stage e2e 120 e2e.json "${P[@]}" bench/bench_e2e.py --data "$rafdb" --device cpu --image-size 40 --batch-size 32 \
    --epochs 1 --num-workers 1 --env "$work/env.rows" --out @ROWS@
else
  dev=cuda
  stage env 15 env.json "${P[@]}" bench/gpu_env.py --device cuda --out @ROWS@
  stage kernel-tests 75 kernels.json env TORCH_DEVICE=cuda TRITON_INTERPRET=0 "${P[@]}" -m pytest -v \
    -p no:cacheprovider tests/test_kernels_triton.py tests/test_reference_ops.py
  stage kernel-bench 60 kernels.json "${P[@]}" bench/bench_kernels.py --device cuda --batch 64 256 \
    --modes fwd+bwd fwd bwd --out @ROWS@
  stage train 90 train.json "${P[@]}" bench/bench_train.py --device cuda --warmup 3 --steps 10 --repeats 3 --out @ROWS@
  stage compile-check 45 compile_check.json "${P[@]}" bench/check_compile.py --device cuda --methods smec ce elr \
    --ways eager eager-bf16 compiled-bf16 compiled --out @ROWS@
  stage data 25 loaders.json "${P[@]}" -m smec_fast synth-rafdb "$rafdb" --report @ROWS@
  stage loaders 35 loaders.json "${P[@]}" bench/bench_data.py --dataset rafdb --data "$rafdb" --devices cuda \
    --sizes 224 --limit 0 --batch-size 256 --num-workers 16 --epochs 2 --loaders "cached,torch$dali" --out @ROWS@
  stage e2e 105 e2e.json "${P[@]}" bench/bench_e2e.py --data "$rafdb" --device cuda --env "$work/env.rows" \
    --num-workers 16 --out @ROWS@
fi
echo "gpu.sh ($dev) finished; results under $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
