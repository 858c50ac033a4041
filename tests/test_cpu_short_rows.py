"""The CPU kernels' short-row path: a contiguous row of at most kShortRowVectors vectors (64 fp32
or bf16/fp16 elements, 32 float64 with AVX2) is held in registers, with its own loads, tail
masking, statistics, gradient sums and maps. Every vector count and every tail length there, and
the first length past it, for every op and gradient, checked against the float64 oracle.

A mean offset of 3 makes the masking of the last vector's lanes past the row visible: a lane of
zeros counted in the statistics adds (0 - mean)^2 = 9 to the squared deviations."""
from __future__ import annotations

import pytest
import torch
from cases import Case, assert_matches_oracle, make_inputs, make_statistics

import adain_ext
from adain_ext import reference

pytestmark = pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")

# Lengths 1-8 vectors of 8 lanes (fp32 and 16-bit) and of 4 lanes (float64), full and with a tail,
# and the general path beside them (65, 72). Rows are (H, W) = (1, L); the 3-D case is (N, C, L).
LENGTHS = [2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 40, 47, 48, 56, 63, 64, 65, 72]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _case(L: int, **kw) -> Case:
    return Case(f"short_{L}", (3, 5, 1, L), mean_offset=3.0, **kw)


PARAMS = ([pytest.param(_case(L, alpha=0.6), d, id=f"L{L}-{d}") for L in LENGTHS for d in DTYPES[:2]]
          + [pytest.param(_case(L, unbiased=False), d, id=f"L{L}-biased-{d}")
             for L in (1, 5, 16, 33, 64) for d in DTYPES]
          + [pytest.param(Case("short_3d", (2, 6, 37), mean_offset=3.0), d, id=f"3d-{d}")
             for d in DTYPES])


def _grad(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("case,dtype", PARAMS)
def test_short_rows_adain(case: Case, dtype):
    content, style = make_inputs(case, dtype, requires_grad=True)
    grad_out = _grad(case.content, dtype, 21)
    out = adain_ext.adain(content, style, case.alpha, unbiased=case.unbiased, backend="cpp")
    got = torch.autograd.grad(out, (content, style), grad_out)
    assert_matches_oracle("adain", (content, style), out, got, (grad_out,), dtype, case,
                          alpha=case.alpha, unbiased=case.unbiased)


@pytest.mark.parametrize("case,dtype", PARAMS)
def test_short_rows_affine(case: Case, dtype):
    x, _ = make_inputs(case, dtype, requires_grad=True)
    mean, std = make_statistics(case, dtype, requires_grad=True)
    grad_out = _grad(case.content, dtype, 22)
    # adain_affine has no alpha: the case's alpha serves as a large eps (0.6 or 1). With eps 1e-5
    # a two-element row's x_hat hardly depends on x, and its x gradient is fp32 cancellation.
    eps = case.alpha
    out = adain_ext.adain_affine(x, mean, std, eps, unbiased=case.unbiased, backend="cpp")
    got = torch.autograd.grad(out, (x, mean, std), grad_out)
    assert_matches_oracle("adain_affine", (x, mean, std), out, got, (grad_out,), dtype, case,
                          eps=eps, unbiased=case.unbiased)


@pytest.mark.parametrize("case,dtype", PARAMS)
def test_short_rows_mean_std(case: Case, dtype):
    x, _ = make_inputs(case, dtype, requires_grad=True)
    N, C = case.content[:2]
    stat_shape = (N, C, *([1] * (len(case.content) - 2)))
    grad_mean, grad_std = _grad(stat_shape, dtype, 23), _grad(stat_shape, dtype, 24)
    mean, std = adain_ext.mean_std(x, unbiased=case.unbiased, backend="cpp")
    got = torch.autograd.grad((mean, std), (x,), (grad_mean, grad_std))
    assert_matches_oracle("mean_std", (x,), (mean, std), got, (grad_mean, grad_std), dtype, case,
                          unbiased=case.unbiased)


@pytest.mark.parametrize("L", [5, 16, 40])
def test_short_rows_with_inf_keep_the_alpha_one_rule(L):
    """A short row holding an Inf: with alpha == 1 the output and style gradient of the other rows
    are finite, and the masked tail lanes add no NaN to the finite rows' sums."""
    content = torch.randn(2, 3, 1, L, dtype=torch.float64, requires_grad=True)
    style = torch.randn(2, 3, 1, L, dtype=torch.float64)
    with torch.no_grad():
        content[0, 1, 0, L // 2] = float("inf")
    out = adain_ext.adain(content, style, backend="cpp")
    ref = reference.adain(content.detach(), style)
    finite = torch.ones(2, 3, dtype=torch.bool)
    finite[0, 1] = False
    torch.testing.assert_close(out[finite], ref[finite])
    (grad,) = torch.autograd.grad(out, (content,), torch.ones_like(out))
    assert torch.isfinite(grad[finite]).all()
