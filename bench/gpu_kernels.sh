#!/usr/bin/env bash
# On a CUDA machine, from anywhere: run the Triton kernel tests on CUDA (compiled kernels, not the
# interpreter) and the kernel benchmark, writing everything under $OUT (default bench/results/gpu-<UTC time>):
#   tests.log, bench.log, bench-cudagraph.log, kernels.jsonl (rows to append to bench/results/kernels.jsonl),
#   env.txt (GPU, driver, versions), status.txt (exit codes).
# Needs torch and triton installed; smec_fast is used from this checkout (installed, or put on the path here).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="${OUT:-$REPO/bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
PYFLAGS=()

# smec_fast.kernels lives in kernels/ and is mapped into the package by setup.py, so a bare PYTHONPATH=. does
# not find it. Use an existing install, else an editable install, else a folder of links on PYTHONPATH (with
# -P, Python >= 3.11, so that the checkout's own smec_fast/ in the working directory does not shadow it).
if ! "$PY" -c "import smec_fast.kernels" >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" >"$OUT/pip.log" 2>&1 || true
fi
if ! "$PY" -c "import smec_fast.kernels" >/dev/null 2>&1; then
  shim="$(mktemp -d)"
  mkdir "$shim/smec_fast"
  for f in "$REPO"/smec_fast/*; do
    [ "$(basename "$f")" = "__pycache__" ] || ln -s "$f" "$shim/smec_fast/"
  done
  ln -s "$REPO/kernels" "$shim/smec_fast/kernels"
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  PYFLAGS=(-P)
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  "$PY" "${PYFLAGS[@]}" -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); \
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
  git -C "$REPO" rev-parse HEAD 2>/dev/null && git -C "$REPO" status --porcelain kernels bench tests 2>/dev/null
} >"$OUT/env.txt" 2>&1

# Kernel tests on CUDA: TORCH_DEVICE=cuda keeps conftest.py from switching on the interpreter.
TORCH_DEVICE=cuda TRITON_INTERPRET=0 "$PY" "${PYFLAGS[@]}" -m pytest -q -p no:cacheprovider \
  tests/test_kernels_triton.py tests/test_reference_ops.py --durations=10 >"$OUT/tests.log" 2>&1
tests_rc=$?

# Benchmark: all three providers, do_bench medians; then the same replayed from CUDA graphs.
"$PY" "${PYFLAGS[@]}" "$REPO/bench/bench_kernels.py" --device cuda --out "$OUT/kernels.jsonl" >"$OUT/bench.log" 2>&1
bench_rc=$?
"$PY" "${PYFLAGS[@]}" "$REPO/bench/bench_kernels.py" --device cuda --ops consistency --cudagraph \
  --out "$OUT/kernels.jsonl" >"$OUT/bench-cudagraph.log" 2>&1
graph_rc=$?

printf 'tests %s\nbench %s\nbench_cudagraph %s\n' "$tests_rc" "$bench_rc" "$graph_rc" | tee "$OUT/status.txt"
tail -n 3 "$OUT/tests.log"
cat "$OUT/bench.log"
echo "results in $OUT; append $OUT/kernels.jsonl to bench/results/kernels.jsonl to keep them"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
