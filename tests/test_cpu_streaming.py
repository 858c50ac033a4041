"""The CPU kernels' streamed outputs (csrc/cpu/row_kernels.h, "Streaming outputs"): outputs of at
least ADAIN_EXT_STREAM_MB (default 4 MiB) are written with non-temporal stores, whose unaligned
head and tail go through ordinary ones. What users must not notice: every value is the same bit
for bit as when written through the cache, in every dtype, for rows of any length and alignment,
on every path that streams (contiguous rows: whole, chunked, split into segments; the epilogue;
the prologue's whole-row and chunked paths) and the ones beside them that do not (short rows,
channels_last).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch

import adain_ext

pytestmark = pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")

NEVER = 1 << 62
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (N, C, H, W): odd row lengths put most rows off a 16-byte boundary; 1x2 rows of 16641 elements
# run the prologue's chunked path (longer than a whole row); 65x65 rows are whole but longer
# than a chunk.
SHAPES = [(2, 3, 9, 13), (2, 4, 16, 16), (2, 2, 65, 65), (1, 2, 129, 129), (3, 5, 7, 7), (2, 3, 33, 1)]


@contextlib.contextmanager
def stream_bytes(threshold: int):
    before = torch.ops.adain._cpu_stream_bytes(threshold)
    try:
        yield
    finally:
        torch.ops.adain._cpu_stream_bytes(before)


def _inputs(shape, dtype, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    N, C = shape[:2]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=gen).to(dtype).to(memory_format=fmt)
    noise = torch.randn(N, 1, *shape[2:], generator=gen).to(dtype)
    weight = torch.randn(C, generator=gen).to(dtype)
    bias = torch.randn(C, generator=gen).to(dtype)
    mean = torch.randn(N, C, generator=gen).to(dtype)
    std = (torch.rand(N, C, generator=gen) + 0.5).to(dtype)
    style = torch.randn(N, C, shape[2] + 1, shape[3], generator=gen).to(dtype)
    return x, noise, weight, bias, mean, std, style


def _every_output(shape, dtype, layout, seed=0):
    """The outputs of every op and its gradients on the same inputs (forward and backward)."""
    x, noise, weight, bias, mean, std, style = _inputs(shape, dtype, layout, seed)
    outs = []

    def run(fn, *leaves):
        leaves = [t.detach().clone().requires_grad_() for t in leaves]
        out = fn(*leaves)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
        outs.append(out.detach())
        outs.extend(torch.autograd.grad(out, leaves, grad.to(dtype)))

    run(lambda x_, m, s: adain_ext.adain_affine(x_, m, s, backend="cpp"), x, mean, std)
    run(lambda x_, m, s: adain_ext.adain_affine(x_, m, s, activation="leaky_relu",
                                                 negative_slope=0.2, backend="cpp"),
        x, mean, std)
    run(lambda x_, n, w, b: adain_ext.adain_affine(
        x_, mean, std, noise=n, noise_weight=w, bias=b, pre_activation="leaky_relu",
        pre_negative_slope=0.2, activation="relu", backend="cpp"), x, noise, weight, bias)
    run(lambda c, s: adain_ext.adain(c, s, alpha=0.7, backend="cpp"), x, style)
    run(lambda x_: torch.cat([t.flatten() for t in adain_ext.mean_std(x_, backend="cpp")]), x)
    return outs


def _assert_same_bits(streamed, cached):
    assert len(streamed) == len(cached)
    for i, (a, b) in enumerate(zip(streamed, cached)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), i
        assert torch.equal(a.view(-1).view(torch.uint8) if a.is_contiguous() else a,
                           b.view(-1).view(torch.uint8) if b.is_contiguous() else b), \
            f"output {i} differs where it was streamed"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_streamed_outputs_equal_cached_ones(dtype, layout):
    for shape in SHAPES:
        with stream_bytes(NEVER):
            cached = _every_output(shape, dtype, layout)
        with stream_bytes(0):
            streamed = _every_output(shape, dtype, layout)
        _assert_same_bits(streamed, cached)


@pytest.mark.parametrize("threads", [2, 4])
def test_streamed_segments_equal_cached_ones(threads):
    """Few rows on several threads: each row split into segments, every segment streamed."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.ops.adain._cpu_segment_log(True)
        with stream_bytes(NEVER):
            cached = _every_output((1, 2, 257, 129), torch.float32, "contiguous")
        with stream_bytes(0):
            streamed = _every_output((1, 2, 257, 129), torch.float32, "contiguous")
        segments = torch.ops.adain._cpu_segment_log(False)
    finally:
        torch.set_num_threads(before)
    if max(segments) == 1:  # at::parallel_for may run one thread (an OpenMP-less build)
        pytest.skip(f"the rows were not split on {threads} threads: {sorted(set(segments))}")
    _assert_same_bits(streamed, cached)


def test_threshold_hook_returns_the_previous_value():
    first = torch.ops.adain._cpu_stream_bytes(12345)
    try:
        assert torch.ops.adain._cpu_stream_bytes(-1) == 12345
        assert torch.ops.adain._cpu_stream_bytes(-1) == 12345  # -1 reads, changes nothing
    finally:
        assert torch.ops.adain._cpu_stream_bytes(first) == 12345


@pytest.mark.parametrize("env, want", [(None, 4 << 20), ("0", 0), ("64", 64 << 20)])
def test_threshold_from_the_environment(env, want):
    environ = {k: v for k, v in os.environ.items() if k != "ADAIN_EXT_STREAM_MB"}
    if env is not None:
        environ["ADAIN_EXT_STREAM_MB"] = env
    code = "import torch, adain_ext; print(torch.ops.adain._cpu_stream_bytes(-1))"
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True, timeout=120)
    assert int(out.stdout.split()[-1]) == want
