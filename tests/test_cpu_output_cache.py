"""The CPU kernels' output cache (csrc/cpu/output_cache.h): outputs of 256 KiB and more reuse the
blocks of freed outputs instead of faulting fresh memory in on every call. What users must not
notice: every reused block is fully overwritten, the tensors are ordinary (resizable, shareable,
picklable), the cache never holds more than its cap, threads are safe, and
ADAIN_EXT_OUTPUT_CACHE_MB=0 turns it off.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import pytest
import torch

import adain_ext
from adain_ext import reference

pytestmark = pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")

SHAPE = (4, 64, 16, 16)  # 256 KiB of fp32: the smallest cached size


def _cached() -> int:
    return torch.ops.adain._cpu_output_cache_bytes()


def test_freed_output_is_reused_and_fully_overwritten():
    x = torch.full(SHAPE, float("nan"))
    mean, std = torch.zeros(SHAPE[:2]), torch.ones(SHAPE[:2])
    first = adain_ext.adain_affine(x, mean, std, backend="cpp")
    assert first.isnan().all()
    ptr = first.data_ptr()
    del first
    assert _cached() >= x.nbytes
    x = torch.randn(SHAPE)
    second = adain_ext.adain_affine(x, mean, std, backend="cpp")
    assert second.data_ptr() == ptr  # the NaN block, handed out again
    torch.testing.assert_close(second, reference.adain_affine(x, mean, std))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradients_through_reused_blocks(layout):
    """Forward and backward outputs in a loop (each call reusing the previous call's blocks)
    equal the reference every time, in both layouts."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        content = torch.randn(SHAPE, generator=gen).to(memory_format=fmt).requires_grad_()
        style = torch.randn(SHAPE, generator=gen).requires_grad_()
        out = adain_ext.adain(content, style, backend="cpp")
        g = torch.randn(SHAPE, generator=gen)
        got = torch.autograd.grad(out, (content, style), g)
        leaves = [t.detach().double().requires_grad_() for t in (content, style)]
        want_out = reference.adain(*leaves)
        want = torch.autograd.grad(want_out, leaves, g.double())
        torch.testing.assert_close(out.double(), want_out, rtol=1e-4, atol=1e-4)
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)
        assert out.is_contiguous(memory_format=fmt)


def test_outputs_are_ordinary_tensors():
    x, mean, std = torch.randn(SHAPE), torch.zeros(SHAPE[:2]), torch.ones(SHAPE[:2])
    out = adain_ext.adain_affine(x, mean, std, backend="cpp")
    want = out.clone()
    buffer = io.BytesIO()
    torch.save(out, buffer)
    torch.testing.assert_close(torch.load(io.BytesIO(buffer.getvalue())), want)
    out.share_memory_()
    assert out.is_shared()
    torch.testing.assert_close(out, want)
    out = adain_ext.adain_affine(x, mean, std, backend="cpp")
    flat = out.view(-1)
    flat.resize_(2 * flat.numel())  # a resize allocates a new block and keeps the values
    torch.testing.assert_close(flat[: want.numel()], want.view(-1))


def test_threads_share_the_cache_safely():
    errors = []

    def work(seed):
        try:
            gen = torch.Generator().manual_seed(seed)
            for _ in range(20):
                x = torch.randn(SHAPE, generator=gen)
                mean, std = torch.randn(SHAPE[:2], generator=gen), torch.rand(SHAPE[:2], generator=gen)
                torch.testing.assert_close(adain_ext.adain_affine(x, mean, std, backend="cpp"),
                                           reference.adain_affine(x, mean, std),
                                           rtol=1e-4, atol=1e-4)
        except Exception as error:  # noqa: BLE001  (reported by the main thread)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


_CHILD = """
import torch, adain_ext
x = torch.randn(4, 64, 16, 16)
outs = [adain_ext.adain_affine(x, torch.zeros(4, 64), torch.ones(4, 64), backend="cpp")
        for _ in range(8)]
del outs
print(torch.ops.adain._cpu_output_cache_bytes())
"""


@pytest.mark.parametrize("cap_mb,most", [("0", 0), ("1", 1 << 20)])
def test_cap_from_the_environment(cap_mb, most):
    """ADAIN_EXT_OUTPUT_CACHE_MB caps what the cache keeps (0: nothing, the cache off); 8 freed
    outputs of 256 KiB would be 2 MiB."""
    env = {**os.environ, "ADAIN_EXT_OUTPUT_CACHE_MB": cap_mb}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    held = int(done.stdout.strip().splitlines()[-1])
    assert held <= most
    if most:
        assert held > 0
