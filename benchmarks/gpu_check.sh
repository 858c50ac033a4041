#!/usr/bin/env bash
# The GPU check: one command on a fresh GPU machine that holds only this repository and the
# machine's own python3, torch, triton, nvcc, ninja and compute-sanitizer (no network needed).
#
#   bash .ci/gpu_machine_stack.sh gpu-prebuilt               # HERE, first: _C for sm_90 in .gpu-prebuilt/
#   bash benchmarks/gpu_check.sh [OUT_DIR]                   # there: everything, <= 7 minutes
#   bash benchmarks/gpu_check.sh --quick [OUT_DIR]           # prebuilt, smoke, last failures: <= 4 min
#   bash benchmarks/gpu_check.sh --only bench,apps [OUT_DIR] # chosen steps only
#   bash benchmarks/gpu_check.sh --only build,blocks [OUT_DIR] # the block benchmark (not in the default run)
#   bash benchmarks/gpu_check.sh --only-tests "tests/test_cuda.py::test_x ..." [OUT_DIR]
#
# OUT_DIR defaults to $OUT, then ./out. The steps (build, smoke, tests, triton, bench, apps,
# sanitizer), what each runs, the files that come back and the --quick rerun are described in
# docs/contributing.md ("The GPU check"); a failed step is reported and the next one still runs.
#
# Budgets (seconds). The device lends 15 minutes in all: a start (1-2 min), this run, a second
# start and a 4-minute rerun; so the default run is planned at <= 7 min (420 s: TOTAL_BUDGET 400
# for the environment and the steps, the rest for the summary and the archive), --quick at
# <= 4 min (240 s: TOTAL_BUDGET 220). "Measured" is on the 2-core development VM (torch 2.14.1,
# no GPU, other builds beside it); "assumed" is what no CPU here can measure. C = 16 cores.
#   env        10  one python: `import torch` 2.4 s measured, + nvidia-smi and nvcc --version
#   build      25  prebuilt: a copy and one python that imports adain_ext (2.5 s measured) and
#                  checks its CUDA kernels. Refused: the build gets build_fallback=180 instead,
#                  taken from the steps after it (the last ones end SKIPPED; see the summary's
#                  rerun line): the sm_90-only build of the GPU stack took 631 s here with
#                  MAX_JOBS=1, its slowest object (csrc/cuda/mean_std_kernel.cu) 232 s on a
#                  shared core; with MAX_JOBS=C the 9 objects build side by side: the slowest
#                  one + the link, ~120 s on an uncontended core (assumed 2x)
#   smoke      50  444 cases: 384 in 140 (shape, dtype, backend) groups sharded over 7 processes,
#                  8 fresh-process shapes (48 cases), 1 process for the 12 large-shape cases one
#                  at a time: 16 processes = C, OMP_NUM_THREADS=1 each. A shard: import 2.5 s +
#                  CUDA init (~2 s assumed) + ~10 Triton groups x ~6 kernels x 0.32 s (the median
#                  sm_90 compile of tests/triton_compile_check.py here: 216 in 73 s) = ~24 s, +
#                  ~55 cases x ~0.05 s (assumed) = ~27 s; large-shape process: 12 cases, the 2^28
#                  ones at ~27 GiB peak and ~1 s each (assumed). Workers are cut at limit - 10
#   tests      75  796 tests collected (14 fresh interpreters, 48 float64 gradchecks, 54
#                  opchecks); a worker starts and collects in 4.5 s (measured). W = 8 xdist
#                  workers (C/2) x OMP_NUM_THREADS = C/W = 2 (W x T = C). Fresh interpreters
#                  14 x 2.5 s = 35 s, the rest ~780 x 0.2 s (assumed: launches and small .cpu()
#                  comparisons) = 156 s: (35 + 156) / 8 + 4.5 = ~29 s; x2 for what no CPU
#                  here shows = ~60, + the slowest single test's share
#   triton     65  1100 tests collected, 749 of them triton-cpu targets (skipped on a GPU
#                  machine: no interpreter), 351 on CUDA: 4.7 s start + collection per worker;
#                  their kernels mostly compiled by the smoke step already (Triton's cache on
#                  disk is shared), the rest at most 216 variants x 0.32 s = 69 s of compile,
#                  spread over 8 workers = ~9 s; + 351 x 0.2 s / 8 = ~9 s: ~23 s, x2 = ~45,
#                  + the Inductor, autotune and opcheck tests
#   bench      55  the eager providers over the 56 configurations (14 shapes x 2 dtypes x 2
#                  layouts) first, then the compiled ones in 40% of the step (22 s: Inductor's
#                  first compile ~10-15 s assumed, each configuration compiled once per direction,
#                  the compile time reported apart); no configuration starts in the last 20 s
#   apps       25  StyleGAN-like step 256x256 batch 8, 5 rounds; style transfer stylize / train
#                  step under pytest-benchmark (6 benchmarks at ~1 s each, assumed)
#   probe      15  compute-sanitizer + python + torch import (~8 s assumed under the tool)
#   memcheck   45  78 cases (memcheck set), no case started after limit - 25 s: 10 s for the
#                  import under the tool (assumed) and SANITIZER_MARGIN=15 for the verdict
#   racecheck  35  24 cases (racecheck set: the shared-memory paths, fp32), the same margins
#   total     400  = env 10 + build 25 + smoke 50 + tests 75 + triton 65 + bench 55 + apps 25 +
#                  probe 15 + memcheck 45 + racecheck 35; a step is cut to what the total has
#                  left (less 10 s) and none starts past it, so the run ends by ~405 s even when
#                  the build falls back (then the last steps are SKIPPED and the summary names
#                  the rerun). --quick: env 10 + build 25 + smoke 50 + tests 120 = 205 of 220
#
# At most 8 files land in OUT_DIR, none in a subfolder: summary.md, junit-tests.xml,
# junit-triton.xml, gpu_bench.json, failed_tests.txt and logs.tar.gz (the environment, every
# step's log, the benchmark tables). summary.md and logs.tar.gz are rewritten before and after
# every step and on exit (a trap also covers SIGTERM and SIGINT), so a run killed at any point
# still returns a summary.
#
# Environment:
#   PYTHON=python3        the interpreter (the GPU image's python3 holds torch)
#   STEP_TIMEOUTS="bench=300 tests=200"   per-step limits in seconds, overriding the defaults
#                         (build build_fallback smoke tests triton bench apps probe memcheck racecheck)
#   TOTAL_BUDGET=400      no step runs past this many seconds from the start (--quick: 220)
#   GPU_PREBUILT=.gpu-prebuilt   the prebuilt _C's folder (bash .ci/gpu_machine_stack.sh gpu-prebuilt)
#   SKIP_BUILD=1          reuse the build in place (neither the prebuilt file nor a build)
#   TEST_TIMEOUT=60       pytest-timeout's limit per test
#   COMPUTE_SANITIZER     the compute-sanitizer executable (default: on PATH or in CUDA_HOME)
#   SANITIZER_FILTER      compute-sanitizer kernel filter options (default: every kernel outside
#                         PyTorch's own at::native ones, i.e. this package's CUDA and Triton kernels)
#   GPU_CHECK_FAKE_GPU=1  for this script's own tests: go on although torch sees no GPU
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e 's/^# \{0,1\}//' -e '$d'; }

# What a prebuilt _C was compiled from: csrc/ and setup.py (.ci/gpu_machine_stack.sh gpu-prebuilt
# records it in the manifest through --source-hash; a checkout whose kernels changed since refuses it).
source_hash() {
  (cd "$ROOT" && find csrc setup.py -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16
}

QUICK=0
ONLY=""
ONLY_TESTS=""
ONLY_TESTS_FILE=""
OUT_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY="${2:?--only needs STEP[,STEP]}"; shift ;;
    --only=*) ONLY="${1#*=}" ;;
    --only-tests) ONLY_TESTS="${2:?--only-tests needs node ids}"; shift ;;
    --only-tests=*) ONLY_TESTS="${1#*=}" ;;
    --only-tests-file) ONLY_TESTS_FILE="${2:?--only-tests-file needs a path}"; shift ;;
    --only-tests-file=*) ONLY_TESTS_FILE="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --source-hash) source_hash; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 64 ;;
    *) OUT_ARG="$1" ;;
  esac
  shift
done

OUT_DIR="${OUT_ARG:-${OUT:-$ROOT/out}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)" || exit 64
PY="${PYTHON:-python3}"
PREBUILT="${GPU_PREBUILT:-.gpu-prebuilt}"  # relative to the checkout's root
prebuilt_present() { [ -r "$PREBUILT/manifest.txt" ]; }
REPORT_PY="${REPORT_PYTHON:-$PY}"
AUX_TIMEOUT="${AUX_TIMEOUT:-30}"  # each helper call (versions, probes, the summary's sections)
START=$(date +%s)
# Cores, not what OMP_NUM_THREADS makes nproc say (GPU_CHECK_CORES: this script's own tests).
CORES="${GPU_CHECK_CORES:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"

# ---- Steps and their limits (seconds, the arithmetic is in the header): TOTAL_BUDGET (400,
# --quick 220) caps the whole run including the environment step; the summary and the archive
# take the rest of the 7 (4) minutes.
ALL_STEPS="build smoke tests triton bench apps sanitizer"
# Run only when --only names them: their budgets do not fit the default run's 7 minutes.
OPTIONAL_STEPS="blocks"
declare -A BUDGET=([build]=25 [build_fallback]=180 [smoke]=50 [tests]=75 [triton]=65 [bench]=55
                   [apps]=25 [probe]=15 [memcheck]=45 [racecheck]=35 [blocks]=150)
if [ "$QUICK" = 1 ]; then
  BUDGET[tests]=120  # the failed node ids only, without the triton step after it
fi
SANITIZER_MARGIN=15  # seconds a sanitizer run keeps after its last case for its verdict
for kv in ${STEP_TIMEOUTS:-}; do
  key="${kv%%=*}"
  if [ -z "${BUDGET[$key]+x}" ] || ! [[ "${kv#*=}" =~ ^[0-9]+$ ]]; then
    echo "gpu_check: STEP_TIMEOUTS entry '$kv' is not STEP=SECONDS with STEP one of ${!BUDGET[*]}" >&2
    exit 64
  fi
  BUDGET[$key]="${kv#*=}"
done

if [ -n "$ONLY" ]; then
  STEPS_WANTED=" ${ONLY//,/ } "
  for s in $STEPS_WANTED; do
    case " $ALL_STEPS $OPTIONAL_STEPS " in *" $s "*) ;; *) echo "gpu_check: --only: unknown step '$s' (steps: $ALL_STEPS $OPTIONAL_STEPS)" >&2; exit 64 ;; esac
  done
  MODE="only $ONLY"
elif [ "$QUICK" = 1 ]; then
  STEPS_WANTED=" build smoke tests "
  MODE="quick"
else
  STEPS_WANTED=" $ALL_STEPS "
  MODE="default"
fi
[ "${SKIP_BUILD:-0}" = 1 ] && STEPS_WANTED="${STEPS_WANTED/ build / }" && MODE="$MODE, SKIP_BUILD"

# Node ids the tests step runs instead of its files (the triton step then has nothing left).
TEST_IDS="$ONLY_TESTS"
if [ -n "$ONLY_TESTS_FILE" ]; then
  [ -r "$ONLY_TESTS_FILE" ] || { echo "gpu_check: cannot read $ONLY_TESTS_FILE" >&2; exit 64; }
  TEST_IDS="$TEST_IDS $(grep -v '^\s*#' "$ONLY_TESTS_FILE" | tr '\n' ' ')"
elif [ -z "$TEST_IDS" ] && [ "$QUICK" = 1 ] && [ -r benchmarks/results/last_failed.txt ]; then
  TEST_IDS="$(grep -v '^\s*#' benchmarks/results/last_failed.txt | tr '\n' ' ')"
  ONLY_TESTS_FILE=benchmarks/results/last_failed.txt
fi
read -r -a TEST_ID_LIST <<<"$TEST_IDS"  # words, without pathname expansion of their [...]

if [ -z "${TOTAL_BUDGET:-}" ]; then
  if [ -n "$ONLY" ]; then
    TOTAL_BUDGET=20
    for s in $STEPS_WANTED; do
      if [ "$s" = sanitizer ]; then
        TOTAL_BUDGET=$((TOTAL_BUDGET + BUDGET[probe] + BUDGET[memcheck] + BUDGET[racecheck]))
      elif [ "$s" = build ]; then  # room for the build should the prebuilt file be refused
        TOTAL_BUDGET=$((TOTAL_BUDGET + BUDGET[build_fallback]))
      else
        TOTAL_BUDGET=$((TOTAL_BUDGET + BUDGET[$s]))
      fi
    done
    [ "$TOTAL_BUDGET" -gt 570 ] && TOTAL_BUDGET=570
  elif [ "$QUICK" = 1 ]; then
    TOTAL_BUDGET=220
  else
    TOTAL_BUDGET=400
  fi
fi
DEADLINE=$((START + TOTAL_BUDGET))

for f in summary.md junit-tests.xml junit-triton.xml gpu_bench.json failed_tests.txt logs.tar.gz; do
  rm -f "$OUT_DIR/$f"  # this run's files only, none from an earlier one
done
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # logs: they reach OUT_DIR in logs.tar.gz

# ---- Bookkeeping: one row per step, rewritten into summary.md and logs.tar.gz.
declare -a ROWS=()
declare -A STATUS=() SECS=() LIMIT=() NOTE=()
STATE="starting"
CURRENT=""
STEP_PID=""
STEP_T0=0
STEP_NOTE=""
VERSIONS="(not read yet)"

set_row() {  # name status seconds limit note
  local name=$1
  [ -z "${STATUS[$name]+x}" ] && ROWS+=("$name")
  STATUS[$name]=$2; SECS[$name]=$3; LIMIT[$name]=$4; NOTE[$name]=${5:-}
}

is_bad() { case "$1" in FAILED*|TIMEOUT*|KILLED*) return 0 ;; *) return 1 ;; esac; }

# The steps that finished (ok or FAILED: a verdict), those that did not (TIMEOUT, KILLED,
# SKIPPED for the budget, not started), and the rerun the second call should make.
rerun_advice() {
  local s row b cmd done_list="" open_list="" only="" failed="" timeouts="" secs=0
  for s in $STEPS_WANTED; do
    local rows_of=("$s") finished=1 states=""
    [ "$s" = sanitizer ] && rows_of=(probe memcheck racecheck)
    for row in "${rows_of[@]}"; do
      if [ -z "${STATUS[$row]+x}" ]; then
        finished=0; states="$states, $row not started"; continue
      fi
      states="$states, $row ${STATUS[$row]}"
      case "${STATUS[$row]}" in
        ok|FAILED*) ;;
        SKIPPED) [[ "${NOTE[$row]}" == *budget* ]] && finished=0 ;;
        *) finished=0 ;;
      esac
      if [ "${STATUS[$row]}" = TIMEOUT ]; then  # twice what it had, at least its budget
        b=$(( ${LIMIT[$row]} * 2 ))
        [ "$b" -lt "${BUDGET[$row]}" ] && b=${BUDGET[$row]}
        timeouts="$timeouts $row=$b"
        secs=$(( secs + b - BUDGET[$row] ))
      fi
    done
    states="${states#, }"
    [ "$s" = sanitizer ] || states="${states#"$s "}"
    if [ "$finished" = 1 ]; then
      done_list="$done_list, $s ($states)"
      [[ "$states" == *FAILED* ]] && failed="$failed,$s"
    else
      open_list="$open_list, $s ($states)"
      only="$only,$s"
      if [ "$s" = sanitizer ]; then
        secs=$(( secs + BUDGET[probe] + BUDGET[memcheck] + BUDGET[racecheck] ))
      else
        secs=$(( secs + BUDGET[$s] ))
      fi
    fi
  done
  if [ -n "$done_list" ]; then echo "Steps finished: ${done_list#, }."; else echo "Steps finished: none."; fi
  [ -n "$open_list" ] && echo "Steps not finished: ${open_list#, }."
  echo
  if [ -n "$only" ]; then
    only="${only#,}"
    # The rerun's fresh machine needs _C again: build (the prebuilt file, or a build) first.
    [[ ",$only," == *",build,"* ]] || { only="build,$only"; secs=$(( secs + BUDGET[build] )); }
    cmd="bash benchmarks/gpu_check.sh --only $only"
    [ -n "$timeouts" ] && cmd="STEP_TIMEOUTS=\"${timeouts# }\" $cmd"
    echo "Rerun, the second call (its steps' budgets: ~$(( secs + 20 )) s; a 4-minute call holds 220 s of steps, else split it): \`$cmd\`"
  fi
  if [ -s "$OUT_DIR/failed_tests.txt" ]; then
    echo "Rerun${only:+ after that}, for the failed tests (<= 4 min): copy failed_tests.txt to benchmarks/results/last_failed.txt, then \`bash benchmarks/gpu_check.sh --quick\`."
    failed="$(echo "$failed" | sed -e 's/,tests//' -e 's/,triton//')"
  fi
  if [ -n "$failed" ]; then
    failed="${failed#,}"
    [[ ",$failed," == *",build,"* ]] || failed="build,$failed"
    echo "Rerun after a fix, for the failed steps: \`bash benchmarks/gpu_check.sh --only $failed\`."
  elif [ -z "$only" ] && [ ! -s "$OUT_DIR/failed_tests.txt" ]; then
    echo "Rerun: none needed, every step finished without a failure."
  fi
}

write_summary() {
  local tmp="$OUT_DIR/.summary.md.tmp" name
  {
    echo "# gpu_check: $VERSIONS"
    echo
    echo "Mode: $MODE. $STATE; $(( $(date +%s) - START )) s of a ${TOTAL_BUDGET} s budget; $(date -u '+%Y-%m-%d %H:%M:%S UTC'); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git status --porcelain 2>/dev/null | head -n 1)" ] && echo ' (uncommitted changes)')."
    echo
    echo "| step | status | seconds | limit | note |"
    echo "|---|---|---|---|---|"
    for name in "${ROWS[@]}"; do
      echo "| $name | ${STATUS[$name]} | ${SECS[$name]} | ${LIMIT[$name]} | ${NOTE[$name]} |"
    done
    [ ${#ROWS[@]} -eq 0 ] && echo "| (none ran) | | | | |"
    echo
    rerun_advice
    local bad="" counts=""
    if [ -s "$WORK/smoke.log" ]; then
      counts="$(grep -E '^gpu_smoke: [0-9]+ ok' "$WORK/smoke.log" | tail -n 1)"
      bad="$(grep -E '^(BAD|ERROR|OOM) ' "$WORK/smoke.log")"
    fi
    if [ -n "$counts$bad" ]; then
      echo
      echo "## Smoke: ${counts:-still running or cut short}"
      if [ -n "$bad" ]; then
        echo
        echo "Cases not ok ($(printf '%s\n' "$bad" | wc -l)), \`verdict case max-abs-err err/tolerance\` (OOM: out of memory, no verdict on the kernel):"
        echo
        echo '```'
        printf '%s\n' "$bad" | head -n 60
        [ "$(printf '%s\n' "$bad" | wc -l)" -gt 60 ] && echo "... the rest are in smoke.log"
        echo '```'
      fi
    fi
    for name in probe memcheck racecheck; do
      if [ -s "$WORK/$name.log" ] && grep -qE "(ERROR|RACECHECK) SUMMARY" "$WORK/$name.log"; then
        echo
        echo "$name: $(grep -E "(ERROR|RACECHECK) SUMMARY" "$WORK/$name.log" | tail -n 2 | sed 's/^=* *//' | tr '\n' ' ')"
      fi
    done
    # Tests, benchmark ratios and application ratios, from the JUnit XML and JSON files.
    timeout -k 5 "$AUX_TIMEOUT" "$REPORT_PY" benchmarks/report.py gpu-check --work "$WORK" \
      --out "$OUT_DIR" 2>&1 \
      || echo "(benchmarks/report.py gpu-check failed; the logs are in logs.tar.gz)"
    for name in "${ROWS[@]}"; do
      [ "$name" = smoke ] && [ -n "$counts" ] && continue  # its verdicts are listed above
      if is_bad "${STATUS[$name]}" && [ -f "$WORK/$name.log" ]; then
        echo
        echo "### $name: last lines of $name.log"
        echo
        echo '```'
        tail -n 25 "$WORK/$name.log" | cut -c1-300
        echo '```'
      fi
    done
  } >"$tmp" 2>&1
  mv -f "$tmp" "$OUT_DIR/summary.md"
}

write_logs() {
  local tmp="$OUT_DIR/.logs.tar.gz.tmp" limit=$((15 * 1024 * 1024))
  [ -f "$WORK/gpu_bench.json" ] && cp -f "$WORK/gpu_bench.json" "$OUT_DIR/gpu_bench.json"
  tar -czf "$tmp" -C "$WORK" . 2>/dev/null
  if [ "$(stat -c %s "$tmp" 2>/dev/null || echo 0)" -gt "$limit" ]; then
    # Over the 16 MiB a returned file may have: keep each file's last 2 MB.
    local small="$WORK.small" f
    rm -rf "$small" && mkdir -p "$small"
    for f in "$WORK"/*; do tail -c 2000000 "$f" >"$small/$(basename "$f")"; done
    tar -czf "$tmp" -C "$small" . 2>/dev/null
    rm -rf "$small"
  fi
  mv -f "$tmp" "$OUT_DIR/logs.tar.gz"
}

write_outputs() { write_summary; write_logs; }

finish() {
  local rc=$?
  trap - EXIT TERM INT HUP
  [ "$STATE" = starting ] || [[ "$STATE" == running* ]] && STATE="finished"
  write_outputs
  echo
  cat "$OUT_DIR/summary.md"
  rm -rf "$WORK"
  exit "$rc"
}

on_signal() {  # the run is being killed: stop the step, record it, leave the summary
  local sig=$1 code=$2 i
  if [ -n "$STEP_PID" ]; then
    kill -TERM "$STEP_PID" 2>/dev/null  # timeout passes it on to the step's process group
    for i in $(seq 50); do kill -0 "$STEP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$STEP_PID" 2>/dev/null
  fi
  # Also when the signal came between the step's row and its process (no STEP_PID yet).
  if [ -n "$CURRENT" ] && [ "${STATUS[$CURRENT]:-}" = RUNNING ]; then
    set_row "$CURRENT" "KILLED (SIG$sig)" $(( $(date +%s) - STEP_T0 )) "${LIMIT[$CURRENT]}" \
      "the run was killed during this step"
  fi
  STATE="killed by SIG$sig${CURRENT:+ during $CURRENT}"
  exit "$code"
}
trap finish EXIT
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT
trap 'on_signal HUP 129' HUP

# run_step NAME SIGNAL COMMAND...: runs COMMAND under NAME's limit (cut to what the total budget
# has left), output in $WORK/NAME.log; SIGNAL is what the limit sends first (INT lets pytest
# write its JUnit XML and summary), SIGKILL 10 s later.
# limit_for NAME: the seconds NAME's step gets if it starts now: its budget (STEP_BUDGET when
# set), cut to what the total budget has left less 10 s.
limit_for() {
  local left=$((DEADLINE - $(date +%s) - 10)) limit=${STEP_BUDGET:-${BUDGET[$1]}}
  [ "$left" -lt "$limit" ] && limit=$left
  echo "$limit"
}

run_step() {
  local name=$1 sig=$2 rc secs status limit
  shift 2
  limit=$(limit_for "$name")
  if [ $((DEADLINE - $(date +%s) - 10)) -lt 5 ]; then
    set_row "$name" "SKIPPED" 0 "${STEP_BUDGET:-${BUDGET[$name]}}" "the total budget of ${TOTAL_BUDGET} s is spent"
    return 0
  fi
  CURRENT=$name
  STATE="running $name"
  STEP_T0=$(date +%s)
  set_row "$name" "RUNNING" 0 "$limit" "started $(date -u +%H:%M:%S)"
  write_outputs
  echo "== $name (limit ${limit}s)"
  timeout -s "$sig" -k 10 "$limit" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  STEP_PID=$!
  wait "$STEP_PID"
  rc=$?
  # What is left of the step's process group (timeout made it; e.g. a child that ignored the
  # limit's SIGINT, or an xdist worker) must not run on beside the next step.
  kill -KILL -- "-$STEP_PID" 2>/dev/null
  STEP_PID=""
  secs=$(( $(date +%s) - STEP_T0 ))
  if [ $rc -eq 0 ]; then status="ok"
  elif [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ "$secs" -ge "$limit" ]; }; then status="TIMEOUT"
  else status="FAILED (rc $rc)"
  fi
  set_row "$name" "$status" "$secs" "$limit" "${STEP_NOTE:-}"
  STEP_NOTE=""
  STATE="running"
  write_outputs
  echo "   $status after ${secs}s"
  tail -n 3 "$WORK/$name.log" | cut -c1-200 | sed 's/^/   /'
  return $rc
}

skip_step() { set_row "$1" "SKIPPED" 0 "-" "$2"; }
wanted() { [[ "$STEPS_WANTED" == *" $1 "* ]]; }

# ---- Environment: one python call prints "key: value" lines (versions, capability, plugins).
ENV_PY="$(timeout -k 5 "$AUX_TIMEOUT" "$PY" - 2>&1 <<'EOF'
import importlib.metadata as md
import importlib.util
import subprocess
import sys

import torch


def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001  (a tool that is not there)
        return ""


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "none"


nvcc = [w for w in run("nvcc", "--version").split() if w.startswith("V")] or ["none"]  # V13.0.88
drv = run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") or "?"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    dev = f"{p.name} ({p.multi_processor_count} SMs, sm_{p.major}{p.minor}, driver {drv})"
    print(f"capability: {p.major}.{p.minor}")
else:
    dev = "no CUDA GPU"
print(f"versions: {dev}; python {sys.version.split()[0]}, torch {torch.__version__} (CUDA "
      f"{torch.version.cuda}), triton {version('triton')}, nvcc {nvcc[-1]}, setuptools "
      f"{version('setuptools')}, numpy {version('numpy')}")
# What a prebuilt _C must match (.ci/gpu_machine_stack.sh gpu-prebuilt writes the same keys).
print(f"python_abi: {sys.version_info.major}.{sys.version_info.minor}")
print(f"torch_release: {torch.__version__.split('+')[0]}")
print(f"torch_cuda: {torch.version.cuda}")
for name in ("setuptools", "numpy", "pytest", "pytest-xdist", "pytest-timeout",
             "pytest-benchmark", "ninja", "wheel"):
    print(f"package: {name} {version(name)}")
# Every pytest plugin installed (entry points of group pytest11), with its version.
plugins = sorted({f"{ep.dist.name if ep.dist else ep.name} {ep.dist.version if ep.dist else '?'}"
                  for ep in md.entry_points(group="pytest11")})
print("pytest plugins:", ", ".join(plugins) or "none")
print("xdist:", importlib.util.find_spec("xdist") is not None)
print("pytest_timeout:", importlib.util.find_spec("pytest_timeout") is not None)
EOF
)"
env_value() { printf '%s\n' "$ENV_PY" | sed -n "s/^$1: //p" | head -n 1; }
{
  echo "date: $(date -u)"
  echo "mode: $MODE; limits: $(for k in build build_fallback smoke tests triton bench apps probe memcheck racecheck; do printf '%s=%s ' "$k" "${BUDGET[$k]}"; done)total=$TOTAL_BUDGET"
  echo "host: $(uname -srm), $CORES CPUs"
  echo "$ENV_PY"
  timeout 20 nvidia-smi 2>&1
  echo "git: $(git log -1 --format='%h %s' 2>/dev/null)"
  git status --short 2>/dev/null | head -n 20
} >"$WORK/env.txt" 2>&1
VERSIONS="$(env_value versions)"
[ -z "$VERSIONS" ] && VERSIONS="versions unknown ($PY could not report them)"
echo "$VERSIONS"

CAP="$(env_value capability)"
if [ -z "$CAP" ]; then
  if [ "${GPU_CHECK_FAKE_GPU:-0}" = 1 ]; then
    CAP="9.0"
    VERSIONS="$VERSIONS (GPU_CHECK_FAKE_GPU: going on without a GPU)"
  else
    echo "gpu_check: torch sees no CUDA GPU ($PY); nothing to check" >&2
    STATE="stopped: torch ($PY) sees no CUDA GPU"
    exit 2
  fi
fi
PER_TEST=()
[ "$(env_value pytest_timeout)" = True ] && PER_TEST=(--timeout="${TEST_TIMEOUT:-60}")
XDIST=()  # half the CPUs, at most 8: each worker is a CUDA context and a Triton compiler
XDIST_WORKERS=$(( CORES / 2 < 8 ? CORES / 2 : 8 ))
[ "$(env_value xdist)" = True ] && [ "$XDIST_WORKERS" -ge 2 ] && XDIST=(-n "$XDIST_WORKERS")
# OpenMP threads per pytest process (the .cpu() comparisons, CPU references): workers x threads
# <= cores, never 16 threads in each of 8 workers.
if [ ${#XDIST[@]} -gt 0 ]; then
  TEST_THREADS=$(( CORES / XDIST_WORKERS ))
else
  TEST_THREADS=$CORES
fi
[ "$TEST_THREADS" -lt 1 ] && TEST_THREADS=1
STATE="running"

# The prebuilt _C: why it does not fit this machine and checkout, on one line, or nothing.
prebuilt_refusal() {
  local m="$PREBUILT/manifest.txt" why=() got want file key
  if ! prebuilt_present; then echo "no $PREBUILT/manifest.txt"; return; fi
  mval() { sed -n "s/^$1: //p" "$m" | head -n 1; }
  file="$(mval file)"
  if [ -z "$file" ] || [ ! -f "$PREBUILT/$file" ]; then
    echo "$PREBUILT/manifest.txt names no file that is there (${file:-none})"; return
  fi
  for key in python_abi torch_release torch_cuda; do
    got="$(env_value "$key")"; want="$(mval "$key")"
    [ "$got" = "$want" ] || why+=("built for $key $want, this machine has ${got:-unknown}")
  done
  case ";$(mval cuda_archs | tr -d ' ' | sed 's/+PTX//g');" in
    *";$CAP;"*) ;;
    *) why+=("built for CUDA archs $(mval cuda_archs), this GPU is sm_${CAP/./}") ;;
  esac
  [ "$(mval sources)" = "$(source_hash)" ] \
    || why+=("built from other csrc/ or setup.py (sources $(mval sources), the checkout's $(source_hash))")
  local out="" w
  for w in "${why[@]}"; do out="$out${out:+; }$w"; done
  [ -z "$out" ] || echo "$out"
}

# ---- 1. The prebuilt _C when it fits, else a build for this GPU only.
LOAD_CHECK='import adain_ext, sys; ok = adain_ext._extension.has_kernel("cuda"); print("adain_ext._C CUDA kernels:", ok, adain_ext._C.__file__); sys.exit(0 if ok else 3)'
if wanted build; then
  REFUSED=""
  if prebuilt_present; then
    REFUSED="$(prebuilt_refusal)"
    if [ -z "$REFUSED" ]; then
      PREBUILT_FILE="$(sed -n 's/^file: //p' "$PREBUILT/manifest.txt" | head -n 1)"
      STEP_NOTE="prebuilt $PREBUILT/$PREBUILT_FILE ($(sed -n 's/^built: //p' "$PREBUILT/manifest.txt" | head -n 1))"
      run_step build TERM bash -c '
        cp -f "$1/$2" "adain_ext/$2" && { [ ! -f "$1/_build_config.py" ] || cp -f "$1/_build_config.py" adain_ext/; } \
        && echo "copied $1/$2 to adain_ext/" && "$3" -c "$4"
      ' build "$PREBUILT" "$PREBUILT_FILE" "$PY" "$LOAD_CHECK"
      [ "${STATUS[build]}" = ok ] || [ "${STATUS[build]}" = SKIPPED ] \
        || REFUSED="it did not load here (${STATUS[build]}; build.log: $(grep -v '^copied' "$WORK/build.log" | tail -n 1 | cut -c1-160))"
      [ -n "$REFUSED" ] && mv -f "$WORK/build.log" "$WORK/build-prebuilt.log"
    fi
  fi
  if [ -z "$REFUSED" ] && prebuilt_present; then
    :  # the prebuilt file loaded (or the budget was spent before it)
  else
    if [ -n "$REFUSED" ]; then
      echo "gpu_check: prebuilt adain_ext/_C refused, building here instead: $REFUSED"
      STEP_NOTE="prebuilt refused: $REFUSED; built here, TORCH_CUDA_ARCH_LIST=$CAP"
    else
      STEP_NOTE="no prebuilt _C ($PREBUILT: bash .ci/gpu_machine_stack.sh gpu-prebuilt); TORCH_CUDA_ARCH_LIST=$CAP"
    fi
    STEP_BUDGET=${BUDGET[build_fallback]} run_step build TERM bash -c '
      env TORCH_CUDA_ARCH_LIST="$1" FORCE_CUDA=1 MAX_JOBS="$4" "$2" setup.py build_ext --inplace \
      && "$2" -c "$3"
    ' build "$CAP" "$PY" "$LOAD_CHECK" "$CORES"
  fi
fi

# Tests, smoke and sanitizer runs use one Triton autotune config (the real autotuning has a test
# of its own); the benchmark autotunes.
export ADAIN_EXT_TRITON_AUTOTUNE=0 PYTHONUNBUFFERED=1
PYTEST=(env OMP_NUM_THREADS="$TEST_THREADS" "$PY" -m pytest -q -rfE -p no:cacheprovider
        --durations=15 "${PER_TEST[@]}")

# ---- 2. Smoke: every op and path once, the shared-memory opt-in shapes in fresh processes.
if wanted smoke; then
  L=$(limit_for smoke)
  STEP_NOTE="workers cut at $(( L > 20 ? L - 10 : L )) s"
  run_step smoke TERM "$PY" benchmarks/gpu_smoke.py --timeout $(( L > 20 ? L - 10 : L ))
fi

# ---- 3. CUDA tests, or the node ids given.
if wanted tests; then
  if [ ${#TEST_ID_LIST[@]} -gt 0 ]; then
    STEP_NOTE="${#TEST_ID_LIST[@]} node ids${ONLY_TESTS_FILE:+ from $ONLY_TESTS_FILE}"
    # A few tests run faster without starting xdist's workers (each imports torch, inits CUDA).
    if [ ${#TEST_ID_LIST[@]} -lt 20 ]; then
      XDIST=()
      PYTEST=(env OMP_NUM_THREADS="$CORES" "${PYTEST[@]:2}")  # one process: every core
    fi
    run_step tests INT "${PYTEST[@]}" "${XDIST[@]}" --junitxml="$OUT_DIR/junit-tests.xml" \
      "${TEST_ID_LIST[@]}"
  elif [ "$QUICK" = 1 ]; then
    skip_step tests "no failed test ids: give --only-tests or --only-tests-file, or keep benchmarks/results/last_failed.txt"
  else
    run_step tests INT "${PYTEST[@]}" "${XDIST[@]}" --junitxml="$OUT_DIR/junit-tests.xml" \
      tests/test_cuda.py tests/test_cuda_sass.py tests/test_op_contract.py tests/test_errors.py \
      -k "test_cuda.py or test_cuda_sass.py or cpp-cuda or reference-cuda"
  fi
fi

# ---- 4. Triton tests on the GPU.
if wanted triton; then
  if [ ${#TEST_ID_LIST[@]} -gt 0 ]; then
    skip_step triton "node ids given: they ran in the tests step"
  else
    run_step triton INT "${PYTEST[@]}" "${XDIST[@]}" --junitxml="$OUT_DIR/junit-triton.xml" \
      tests/test_triton.py tests/test_backends.py tests/test_op_contract.py tests/test_errors.py \
      -k triton
  fi
fi

# ---- 5. Benchmarks: the eager providers first, the compiled ones last in 40% of the time, their
# compile time reported apart; the JSON is rewritten after every provider, so a cut run still
# reports. No configuration starts in the step's last 20 s (the import and a configuration
# under way). In the default run that is a sample of the suite: the whole suite needs --only
# bench with a longer limit (STEP_TIMEOUTS="bench=450").
if wanted bench; then
  L=$(limit_for bench)
  STEP_NOTE="eager first, compiled last (budget $((L * 4 / 10)) s)"
  run_step bench TERM env -u ADAIN_EXT_TRITON_AUTOTUNE \
    "$PY" benchmarks/gpu_bench.py --out "$WORK" \
    --time-budget-s $(( L > 30 ? L - 20 : L / 2 )) --compile-budget-s $((L * 4 / 10)) \
    ${BENCH_ARGS:-}
fi

# ---- 6. Applications: StyleGAN-like generator step, style transfer stylize and train step.
if wanted apps; then
  run_step apps TERM bash -c '
    "$1" benchmarks/bench_stylegan.py --device cuda --rounds 5; a=$?
    "$1" -m pytest -q -p no:cacheprovider benchmarks/bench_style_transfer.py --benchmark-json="$2/style_transfer.json"; b=$?
    exit $(( a != 0 ? a : b ))
  ' apps "$PY" "$WORK"
fi

# ---- 6b. Blocks (--only blocks): AdaIN with its neighbours (StyleGAN's prologue, StarGAN v2's
# epilogue) and the op alone, eager and compiled, the models' own code against accelerate()
# (benchmarks/bench_blocks.py; ~12 compiles, each a few seconds of Inductor and Triton).
if wanted blocks; then
  run_step blocks TERM "$PY" benchmarks/bench_blocks.py --device cuda --blocks stylegan,stargan,op \
    --no-generator --rounds 5 --json "$WORK/blocks_gpu.json" --md "$WORK/blocks_gpu.md"
fi

# ---- 7. compute-sanitizer, last: slow, and the runtime may refuse the device.
if wanted sanitizer; then
  SAN="${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || true)}"
  [ -z "$SAN" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && SAN="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
  if [ -z "$SAN" ]; then
    skip_step memcheck "compute-sanitizer not found"
    skip_step racecheck "compute-sanitizer not found"
  else
    run_step probe TERM "$SAN" --tool memcheck --error-exitcode 1 "$PY" -c \
      "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize(); print('probe ok')"
    if [ "${STATUS[probe]}" = SKIPPED ]; then
      skip_step memcheck "the total budget is spent"
      skip_step racecheck "the total budget is spent"
    elif [ "${STATUS[probe]}" != ok ]; then
      refusal="$(grep -iE -m 1 'not supported|error 999|unknown error|no CUDA-capable|not available' "$WORK/probe.log" | cut -c1-200)"
      if [ -n "$refusal" ] && [ "${STATUS[probe]}" != TIMEOUT ]; then
        set_row probe "SKIPPED" "${SECS[probe]}" "${LIMIT[probe]}" "the runtime refused the device: $refusal"
        skip_step memcheck "the runtime refused the device (see probe)"
        skip_step racecheck "the runtime refused the device (see probe)"
      else
        skip_step memcheck "the sanitizer probe failed"
        skip_step racecheck "the sanitizer probe failed"
      fi
    else
      if [ -n "${SANITIZER_FILTER+x}" ]; then
        read -r -a FILTER <<<"$SANITIZER_FILTER"
      elif timeout 20 "$SAN" --help 2>&1 | grep -q -- '--kernel-name-exclude'; then
        # PyTorch's own kernels (at::native::..., "2at6native" when mangled): what is left is
        # this package's CUDA (adain::cuda::) and Triton kernels.
        FILTER=(--kernel-name-exclude kns=native)
      else
        FILTER=()
      fi
      # Each run starts no case after its limit less the import under the tool (10 s) and
      # SANITIZER_MARGIN, which it keeps for compute-sanitizer's verdict (ERROR SUMMARY).
      L=$(limit_for memcheck); D=$(( L - SANITIZER_MARGIN - 10 > 5 ? L - SANITIZER_MARGIN - 10 : 5 ))
      STEP_NOTE="memcheck set, cases until ${D} s; filter: ${FILTER[*]:-none}; PYTORCH_NO_CUDA_MEMORY_CACHING=1"
      run_step memcheck TERM env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck \
        --error-exitcode 1 --print-limit 50 "${FILTER[@]}" "$PY" benchmarks/gpu_sanitizer_case.py \
        cuda --set memcheck --deadline-s "$D"
      L=$(limit_for racecheck); D=$(( L - SANITIZER_MARGIN - 10 > 5 ? L - SANITIZER_MARGIN - 10 : 5 ))
      STEP_NOTE="racecheck set, cases until ${D} s; filter: ${FILTER[*]:-none}"
      run_step racecheck TERM "$SAN" --tool racecheck --error-exitcode 1 --print-limit 50 \
        "${FILTER[@]}" "$PY" benchmarks/gpu_sanitizer_case.py cuda --set racecheck --deadline-s "$D"
    fi
  fi
fi

STATE="finished"
FAILED=0
for name in "${ROWS[@]}"; do is_bad "${STATUS[$name]}" && FAILED=1; done
exit $FAILED
