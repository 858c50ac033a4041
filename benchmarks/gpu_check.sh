#!/usr/bin/env bash
# The GPU check of issue 3, one command on a fresh GPU machine that holds only this repository and
# the machine's own python, torch, triton, nvcc and ninja (no network needed):
#
#   benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, then ./out
#
# 1. builds adain_ext._C in place for the visible GPU only (TORCH_CUDA_ARCH_LIST = its capability)
# 2. runs tests/test_cuda.py, tests/test_cuda_sass.py and tests/test_triton.py on the GPU (junit
#    XML + log)
# 3. runs compute-sanitizer memcheck and racecheck on benchmarks/gpu_sanitizer_case.py, if present
# 4. runs benchmarks/gpu_bench.py with the Triton providers (JSON + markdown)
# 5. runs the application benchmarks: the StyleGAN-like generator step (256x256, batch 8) and
#    end-to-end stylize / train step (benchmarks/bench_style_transfer.py)
# and prints a summary table last. Every step has a timeout so that the whole run stays under
# 8 minutes on an H100; a failed step is reported and the next one still runs.
# Env: STEP_TIMEOUTS="build tests memcheck racecheck bench apps" seconds
#      (default "110 150 30 30 100 60": at most 8 minutes in all),
#      BENCH_ARGS (extra gpu_bench.py arguments), SKIP_BUILD=1 (reuse a build).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/out}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
read -r T_BUILD T_TESTS T_MEMCHECK T_RACECHECK T_BENCH T_APPS <<<"${STEP_TIMEOUTS:-110 150 30 30 100 60}"
START=$(date +%s)
declare -a STEPS=()

run_step() {  # name timeout logfile command...
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$(date +%s)
  echo "== $name (timeout ${limit}s, log $log)"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local status="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT"; elif [ $rc -ne 0 ]; then status="FAILED (rc $rc)"; fi
  local secs=$(( $(date +%s) - t0 ))
  STEPS+=("$name|$status|$secs|$(basename "$log")")
  tail -n 3 "$log" | sed 's/^/   /'
  return $rc
}

# ---- Environment.
{
  echo "date: $(date -u)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('device', torch.cuda.get_device_name(), torch.cuda.get_device_capability(), torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -n 2
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files"
} >"$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

# ---- 1. Build for this GPU only.
CAP=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
if [ -z "$CAP" ]; then
  echo "gpu_check: torch sees no CUDA GPU; nothing to check" >&2
  exit 2
fi
if [ "${SKIP_BUILD:-0}" != "1" ]; then
  run_step build "$T_BUILD" "$OUT_DIR/build.log" \
    env TORCH_CUDA_ARCH_LIST="$CAP" FORCE_CUDA=1 MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
fi
BUILD_OK=$("$PY" -c "import adain_ext, sys; sys.exit(0 if adain_ext._extension.has_kernel('cuda') else 1)" 2>/dev/null && echo yes || echo no)

# ---- 2. CUDA tests.
if [ "$BUILD_OK" = yes ]; then
  run_step tests "$T_TESTS" "$OUT_DIR/test_cuda.log" \
    "$PY" -m pytest -q -rfEs tests/test_cuda.py tests/test_cuda_sass.py tests/test_triton.py --junitxml="$OUT_DIR/test_cuda.xml" -p no:cacheprovider
else
  STEPS+=("tests|SKIPPED (no CUDA kernels built)|0|build.log")
fi

# ---- 3. compute-sanitizer on a small case.
SANITIZER="$(command -v compute-sanitizer || true)"
[ -z "$SANITIZER" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
if [ "$BUILD_OK" = yes ] && [ -n "$SANITIZER" ]; then
  run_step memcheck "$T_MEMCHECK" "$OUT_DIR/memcheck.log" \
    "$SANITIZER" --tool memcheck --error-exitcode 1 "$PY" benchmarks/gpu_sanitizer_case.py
  run_step racecheck "$T_RACECHECK" "$OUT_DIR/racecheck.log" \
    "$SANITIZER" --tool racecheck --error-exitcode 1 "$PY" benchmarks/gpu_sanitizer_case.py
elif [ -z "$SANITIZER" ]; then
  STEPS+=("sanitizer|SKIPPED (compute-sanitizer not found)|0|-")
else
  STEPS+=("sanitizer|SKIPPED (no CUDA kernels built)|0|-")
fi

# ---- 4. Benchmarks.
if [ "$BUILD_OK" = yes ]; then
  run_step bench "$T_BENCH" "$OUT_DIR/gpu_bench.log" \
    "$PY" benchmarks/gpu_bench.py --out "$OUT_DIR" --compile-budget-s 40 --time-budget-s 85 \
    ${BENCH_ARGS:---plugin triton_providers}
  run_step apps "$T_APPS" "$OUT_DIR/apps.log" bash -c \
    "'$PY' benchmarks/bench_stylegan.py --device cuda --rounds 5 && '$PY' -m pytest -q -p no:cacheprovider benchmarks/bench_style_transfer.py --benchmark-json='$OUT_DIR/style_transfer.json'"
fi

# ---- Summary, last.
TOTAL=$(( $(date +%s) - START ))
{
  echo
  echo "## gpu_check summary ($(head -n 1 "$OUT_DIR/env.txt" | cut -c7-), ${TOTAL}s)"
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---|---|"
  for s in "${STEPS[@]}"; do IFS='|' read -r a b c d <<<"$s"; echo "| $a | $b | $c | $d |"; done
  if [ -f "$OUT_DIR/test_cuda.log" ]; then
    echo
    echo "tests: $(grep -E '[0-9]+ (passed|failed|skipped|errors?)' "$OUT_DIR/test_cuda.log" | tail -n 1)"
  fi
  if [ -f "$OUT_DIR/gpu_bench.json" ]; then
    echo
    "$PY" - "$OUT_DIR/gpu_bench.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
print(f"bench on {data['meta']['device_name']}, copy {data['meta']['copy_gbs']:.0f} GB/s")
print("| metric | value |\n|---|---|")
for k, v in data["summary"].items():
    print(f"| {k} | {v:.3g} |")
EOF
  fi
} | tee "$OUT_DIR/summary.md"
FAILED=$(printf '%s\n' "${STEPS[@]}" | grep -cE '\|(FAILED|TIMEOUT)')
exit $(( FAILED > 0 ? 1 : 0 ))
