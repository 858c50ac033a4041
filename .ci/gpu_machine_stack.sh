#!/usr/bin/env bash
# The GPU machines' software stack, built and tested here before a GPU run depends on it:
# Python 3.12, torch 2.11.0 (cu130), triton 3.6.0, in a virtual environment of its own
# (.ci-venv/torch211). Builds the extension with its CUDA code for sm_90 (the H100/H200 the GPU
# check runs on) and runs the CPU, registration/opcheck/gradcheck/compile, Triton interpreter and
# CUDA machine-code suites against that build.
#
#   bash .ci/gpu_machine_stack.sh prepare       # environment and build (CI runs it beside the main suite)
#   bash .ci/gpu_machine_stack.sh test          # the tests, once prepared
#   bash .ci/gpu_machine_stack.sh               # both
#   bash .ci/gpu_machine_stack.sh gpu-prebuilt  # prepare, then the GPU check's prebuilt _C
#
# gpu-prebuilt puts that build's adain_ext/_C (sm_90: H100 and H200; torch 2.11.0, CUDA 13.0,
# Python 3.12) with its _build_config.py and a manifest.txt into .gpu-prebuilt/ (git ignores it;
# it travels to the GPU machine with the run, at most 64 MiB), where benchmarks/gpu_check.sh
# loads it instead of building, after checking that the manifest matches the machine's Python,
# torch release, torch's CUDA and GPU capability and the checkout's csrc/ + setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/common.sh
VENV=.ci-venv/torch211
PREBUILT=.gpu-prebuilt
PREBUILT_LIMIT=$((64 * 1024 * 1024))  # what may travel with a GPU run, in all
STEP=${1:-all}
export TORCH_CUDA_ARCH_LIST=9.0  # the build's one arch; test_cuda_sass.py checks the build has it

prepare() {
  local py312
  py312=$(find_python 3.12) || return 1
  [ -x "$VENV/bin/python" ] || "$py312" -m venv "$VENV"
  # numpy < 2.4: triton 3.6's interpreter fails with numpy 2.4 and 2.5 (range over tensor bounds).
  "$VENV/bin/pip" install -q torch==2.11.0 triton==3.6.0 "numpy<2.4" ninja setuptools wheel \
    pytest pytest-timeout Pillow tqdm safetensors 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, triton, numpy, sys; print('gpu machine stack: python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
  if ! FORCE_CUDA=1 MAX_JOBS=1 "$VENV/bin/python" setup.py -q build_ext --inplace \
      >"$VENV/build.log" 2>&1; then
    tail -n 60 "$VENV/build.log"
    return 1
  fi
  echo "gpu machine stack: built for sm_90, $(grep -c 'warning #' "$VENV/build.log" || true) nvcc warnings"
}

gpu_prebuilt() {
  # The checkout's own adain_ext/_build_config.py describes the main environment's build: keep
  # it; this build's goes into the folder with its _C.
  local keep file size sources
  sources=$(bash benchmarks/gpu_check.sh --source-hash)  # what the build compiles
  keep=$(mktemp)
  cp adain_ext/_build_config.py "$keep" 2>/dev/null || : >"$keep"
  if ! prepare; then rm -f "$keep"; return 1; fi
  cp adain_ext/_build_config.py "$keep.built"
  if [ -s "$keep" ]; then cp "$keep" adain_ext/_build_config.py; fi
  if [ "$(bash benchmarks/gpu_check.sh --source-hash)" != "$sources" ]; then
    echo "gpu machine stack: csrc/ or setup.py changed during the build; run gpu-prebuilt again" >&2
    return 1
  fi
  file="_C$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
  "$VENV/bin/python" -c "import adain_ext, sys; sys.exit(0 if adain_ext._extension.has_kernel('cuda') else 'gpu machine stack: the build has no CUDA kernels')"
  rm -rf "$PREBUILT" && mkdir -p "$PREBUILT"
  cp adain_ext/"$file" "$PREBUILT/$file"
  mv "$keep.built" "$PREBUILT/_build_config.py"
  rm -f "$keep"
  {
    "$VENV/bin/python" -c "import sys, torch; print(f'python_abi: {sys.version_info.major}.{sys.version_info.minor}'); print('torch_release:', torch.__version__.split('+')[0]); print('torch_cuda:', torch.version.cuda)"
    echo "cuda_archs: $TORCH_CUDA_ARCH_LIST"
    echo "sources: $sources"
    echo "file: $file"
    echo "built: $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git status --porcelain -- csrc setup.py 2>/dev/null)" ] && echo ' + uncommitted csrc/setup.py')"
  } >"$PREBUILT/manifest.txt"
  size=$(du -sb "$PREBUILT" | cut -f1)
  if [ "$size" -gt "$PREBUILT_LIMIT" ]; then
    echo "gpu machine stack: $PREBUILT is $((size / 1024 / 1024)) MiB, over the $((PREBUILT_LIMIT / 1024 / 1024)) MiB a GPU run can take along" >&2
    return 1
  fi
  echo "gpu machine stack: $PREBUILT/$file ($((size / 1024)) KiB in all) for sm_90:"
  sed 's/^/  /' "$PREBUILT/manifest.txt"
  echo "  take $PREBUILT along to the GPU machine (it travels with the working tree when named, e.g. as carry)"
}

run_tests() {
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=900 \
    tests/test_op_contract.py tests/test_backends.py tests/test_errors.py tests/test_nonfinite_rows.py \
    tests/test_triton.py tests/test_triton_launch_limits.py tests/test_cuda_sass.py
}

case "$STEP" in
  prepare) prepare ;;
  test) run_tests ;;
  all) prepare && run_tests ;;
  gpu-prebuilt) gpu_prebuilt ;;
  *) echo "usage: $0 [prepare|test|gpu-prebuilt]" >&2; exit 2 ;;
esac
