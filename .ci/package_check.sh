#!/usr/bin/env bash
# The package as a user installs it, on the newest torch this project supports: the sdist built
# from this checkout, a wheel built from that sdist alone (so the sdist must carry everything the
# build needs), installed into a fresh virtual environment (Python 3.13, torch 2.15.0, the triton
# and numpy it brings), and a test selection run against the installed copy, not the checkout:
# the CPU kernels against the oracle, registration, opcheck, gradcheck, torch.compile and the
# Triton interpreter.
#
#   bash .ci/package_check.sh prepare   # environment, sdist, wheel, install (CI runs it in the background)
#   bash .ci/package_check.sh test      # the tests, once prepared
#   bash .ci/package_check.sh           # both
#
# The wheel here is CPU-only (ADAIN_EXT_CUDA=0): the CUDA code is built and tested by
# .ci/gpu_machine_stack.sh, and a second CUDA build would double CI's time.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/common.sh
REPO=$(pwd)
VENV=.ci-venv/torch215
DIST=.ci-venv/dist
PY="$REPO/$VENV/bin/python"

prepare() {
  local py313
  py313=$(find_python 3.13) || return 1
  [ -x "$PY" ] || "$py313" -m venv "$VENV"
  # This machine's pip config caps torch at the release on its disk (2.14.1); the newest end of
  # the supported range is fetched from the registry instead.
  PIP_CONSTRAINT=/dev/null "$PY" -m pip install -q torch==2.15.0 numpy "setuptools>=77" wheel \
    build ninja pytest 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import torch, triton, numpy, sys; print('package check: python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
  rm -rf "$DIST"
  "$PY" -m build --sdist --no-isolation --outdir "$DIST" >"$VENV/sdist.log" 2>&1 || {
    tail -n 40 "$VENV/sdist.log"; return 1; }
  local sdist
  sdist=$(ls "$DIST"/adain_ext-*.tar.gz)
  echo "package check: $(basename "$sdist"), $(tar tzf "$sdist" | wc -l) files"
  if ! ADAIN_EXT_CUDA=0 MAX_JOBS=1 "$PY" -m pip wheel -q --no-build-isolation --no-deps \
      --wheel-dir "$DIST" "$sdist" >"$VENV/wheel.log" 2>&1; then
    tail -n 60 "$VENV/wheel.log"
    return 1
  fi
  "$PY" -m pip install -q --no-deps --force-reinstall "$DIST"/adain_ext-*.whl
  echo "package check: installed $(basename "$DIST"/adain_ext-*.whl)"
}

run_tests() {
  # The tests run from a copy outside the checkout, so `import adain_ext` finds the installed
  # wheel (the checkout's pyproject puts "." first on sys.path).
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  cp -r tests "$work/tests"
  cd "$work"
  "$PY" - "$REPO" <<'EOF'
import sys
import adain_ext
location = adain_ext.__file__
assert not location.startswith(sys.argv[1] + "/adain_ext"), f"imported the checkout: {location}"
assert adain_ext.HAS_CPP, f"the wheel's kernels did not load: {adain_ext._extension.IMPORT_ERROR}"
print("package check: testing", location)
EOF
  # Every backend against the oracle in fp32/fp64 (16-bit: the pinned-torch suite), the per-op
  # contract of both backends (registration, opcheck, gradcheck, torch.compile, edge cases), bad
  # input, and the Triton interpreter's own checks.
  "$PY" -m pytest -q -p no:cacheprovider --rootdir "$work" \
    tests/test_op_contract.py tests/test_errors.py tests/test_nonfinite_rows.py tests/test_row_math_edges.py \
    tests/test_backends.py tests/test_triton.py \
    -k "not (test_backends.py and (float16 or bfloat16)) and (not test_triton.py or gradcheck or compile or matches_cpp)"
}

case "${1:-all}" in
  prepare) prepare ;;
  test) run_tests ;;
  all) prepare && run_tests ;;
  *) echo "usage: $0 [prepare|test]" >&2; exit 2 ;;
esac
