"""The adain_triton ops' registration in 16-bit: opcheck (schema, fake kernels, autograd
registration) in float16 and bfloat16, where statistics in float32 and outputs in x's dtype can be
told apart, and adain_affine with mixed statistic shapes and dtypes, gradients included. On CPU
the ops run through the Triton interpreter (tests/conftest.py switches it on)."""
from __future__ import annotations

import pytest
import torch
from cases import (
    CASES,
    Case,
    assert_close,
    assert_grads_close,
    double_leaves,
    make_inputs,
    opcheck_samples,
)

import adain_ext
from adain_ext import reference

pytest.importorskip("triton")
pytest.importorskip("adain_ext.triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# One case per dtype: both layouts, both variances, alpha (opcheck is slow under the interpreter).
OPCHECK_PARAMS = [
    pytest.param(case, dtype, id=f"{case.name}-{str(dtype).split('.')[-1]}")
    for case in CASES
    for name, dtype in (("alpha_biased", torch.float16), ("channels_last", torch.bfloat16))
    if case.name == name
]


@pytest.mark.parametrize("case,dtype", OPCHECK_PARAMS)
def test_opcheck_16bit(case: Case, dtype):
    for op, args in opcheck_samples(torch.ops.adain_triton, case, dtype, DEVICE):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("x_dtype,mean_dtype,std_dtype", [
    (torch.float16, torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float64, torch.float32),
], ids=str)
def test_affine_mixed_statistic_shapes_and_dtypes(x_dtype, mean_dtype, std_dtype):
    case = Case("mixed", (2, 3, 9, 11))
    x, _ = make_inputs(case, x_dtype, DEVICE, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(2, 3, generator=gen).to(DEVICE, mean_dtype).requires_grad_()
    std = (torch.rand(2, 3, 1, 1, generator=gen) + 0.5).to(DEVICE, std_dtype).requires_grad_()
    out = adain_ext.adain_affine(x, mean, std, backend="triton")
    grad_out = torch.randn(out.shape, generator=gen).to(DEVICE, x_dtype)
    got = torch.autograd.grad(out, (x, mean, std), grad_out)
    leaves = double_leaves(x, mean, std)
    ref = reference.adain_affine(*leaves)
    want = torch.autograd.grad(ref, leaves, grad_out.double())
    assert out.dtype == x_dtype
    assert_close(out, ref, x_dtype)
    for g, w, leaf in zip(got, want, (x, mean, std)):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype
        assert_grads_close((g.to(x_dtype),), (w,), x_dtype, case)
