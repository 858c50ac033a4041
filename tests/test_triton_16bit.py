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
    check_affine_mixed_statistics,
    make_inputs,
    opcheck_samples,
)

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
    check_affine_mixed_statistics(x, mean, std, "triton", case)
