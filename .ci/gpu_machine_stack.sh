#!/usr/bin/env bash
# The GPU machines' software stack, built and tested here before a GPU run depends on it:
# Python 3.12, torch 2.11.0 (cu130), triton 3.6.0, in a virtual environment of its own
# (.ci-venv/torch211). Builds the extension with its CUDA code for sm_90 (the H100/H200 the GPU
# check runs on) and runs the CPU, registration/opcheck/gradcheck/compile, Triton interpreter and
# CUDA machine-code suites against that build.
#
#   bash .ci/gpu_machine_stack.sh prepare   # environment and build (CI runs it beside the main suite)
#   bash .ci/gpu_machine_stack.sh test      # the tests, once prepared
#   bash .ci/gpu_machine_stack.sh           # both
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/common.sh
VENV=.ci-venv/torch211
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

run_tests() {
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=900 \
    tests/test_op_contract.py tests/test_backends.py tests/test_errors.py tests/test_nonfinite_rows.py \
    tests/test_triton.py tests/test_triton_launch_limits.py tests/test_cuda_sass.py
}

case "$STEP" in
  prepare) prepare ;;
  test) run_tests ;;
  all) prepare && run_tests ;;
  *) echo "usage: $0 [prepare|test]" >&2; exit 2 ;;
esac
