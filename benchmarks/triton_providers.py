"""The Triton providers for the GPU benchmark (benchmarks/gpu_bench.py), loaded as a plugin:

    python benchmarks/gpu_bench.py --plugin triton_providers --out out/
    python benchmarks/gpu_bench.py --plugin triton_providers \
        --providers adain_ext,adain_ext_triton,adain_ext_triton_compiled

Adds to gpu_bench's suite, from the provider table of adain_ext/bench_harness.py (which defines
them, with a correctness probe that decides whether each is offered):

  adain_ext_triton           the Triton kernels (adain_ext.triton), eager (already in the suite)
  adain_ext_triton_compiled  the same under torch.compile(fullgraph=True): Inductor traces into
                             the triton_ops (on CUDA), so this shows what compile adds or removes

Without gpu_bench (any script): `PROVIDERS` below maps the same names to factory(device) ->
callable(content, style) -> out, or None when unavailable.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from adain_ext import bench_harness  # after the checkout is on the path

NAMES = ("adain_ext_triton", "adain_ext_triton_compiled")
PROVIDERS = {name: bench_harness.PROVIDERS[name].on for name in NAMES}

_bench = sys.modules.get("gpu_bench")
if _bench is not None and hasattr(_bench, "PROVIDERS"):  # the table's entries, flags and all
    for _name in NAMES:
        _bench.PROVIDERS[_name] = bench_harness.PROVIDERS[_name]
