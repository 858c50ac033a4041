"""Triton contenders for the GPU benchmark (benchmarks/gpu_bench.py), loaded as a plugin:

    python benchmarks/gpu_bench.py --plugin triton_providers --out out/
    python benchmarks/gpu_bench.py --plugin triton_providers \
        --providers adain_ext,triton,triton+compile

Registers, each as factory(device) -> callable(content, style) -> out, or None when unavailable:

  triton          adain_ext.adain(backend="triton"): the adain_triton ops, eager (replaces
                  gpu_bench's own "triton" entry with the same callable plus a correctness probe)
  triton+compile  the same call under torch.compile(fullgraph=True): Inductor traces into the
                  triton_ops (on CUDA), so this shows what compile adds or removes around them

Without gpu_bench (any script): `PROVIDERS` below maps the same names to the same factories.
A benchmark helper, not a test: the probe only decides whether a provider is offered.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import adain_ext
from adain_ext import reference

Provider = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _probe(fn: Provider, device: str) -> bool:
    """True when fn runs here and matches the reference on a small odd shape."""
    try:
        content = torch.randn(2, 3, 9, 7, device=device)
        style = torch.randn(2, 3, 5, 6, device=device) * 2 + 1
        out = fn(content, style)
        want = reference.adain(content.double(), style.double())
        return bool((out.double() - want).abs().max() < 1e-3)
    except Exception as error:  # noqa: BLE001  (no triton, no GPU, a kernel that fails to build)
        print(f"triton_providers: the Triton backend is unavailable on {device}: {error}",
              file=sys.stderr)
        return False


def triton_eager(device: str) -> Provider | None:
    def run(content, style):
        return adain_ext.adain(content, style, backend="triton")
    return run if _probe(run, device) else None


def triton_compiled(device: str) -> Provider | None:
    if not str(device).startswith("cuda"):
        return None  # on CPU the ops are opaque to compile (interpreter): nothing to measure
    run = torch.compile(lambda c, s: adain_ext.adain(c, s, backend="triton"), fullgraph=True,
                        dynamic=False)
    return run if _probe(run, device) else None


PROVIDERS: dict[str, Callable[[str], Provider | None]] = {
    "triton": triton_eager,
    "triton+compile": triton_compiled,
}

_bench = sys.modules.get("gpu_bench")
if _bench is not None and hasattr(_bench, "register_provider"):
    for _name, _factory in PROVIDERS.items():
        _bench.register_provider(_name, _factory)
