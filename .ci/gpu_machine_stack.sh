#!/usr/bin/env bash
# The GPU machines' software stack, built and tested here before a GPU run depends on it:
# Python 3.12, torch 2.11.0 (cu130), triton 3.6.0, in a virtual environment of its own. Builds the
# extension with its CUDA code for sm_90 (the H100/H200 the GPU check runs on) and runs the CPU,
# registration/opcheck/gradcheck/compile and Triton interpreter suites against it.
#   bash .ci/gpu_machine_stack.sh        (CI runs it after the main suite)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.ci-venv/torch211
PY312=""
for candidate in "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
  if [ -x "$candidate" ]; then PY312=$candidate; break; fi
done
if [ -z "$PY312" ]; then
  echo "gpu_machine_stack: no Python 3.12 found (pyenv or python3.12 on PATH)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV"
# numpy < 2.5: triton 3.6's interpreter fails with numpy 2.5 (range over tensor bounds).
"$VENV/bin/pip" install -q torch==2.11.0 triton==3.6.0 "numpy<2.5" ninja setuptools wheel \
  pytest pytest-timeout Pillow tqdm safetensors
"$VENV/bin/python" -c "import torch, triton, numpy, sys; print('gpu machine stack: python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 MAX_JOBS=2 "$VENV/bin/python" setup.py -q build_ext --inplace \
  >"$VENV/build.log" 2>&1 || { tail -n 60 "$VENV/build.log"; exit 1; }
echo "gpu machine stack: built for sm_90 ($(grep -c 'warning' "$VENV/build.log" || true) compiler warning lines)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -p no:benchmark --timeout=900 \
  tests/test_ops.py tests/test_backends.py tests/test_errors.py tests/test_nonfinite_rows.py \
  tests/test_triton.py tests/test_cuda_sass.py
