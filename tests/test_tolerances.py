"""The comparison helpers of cases.py can fail: for every case, dtype, output and gradient they
accept the float64 reference rounded to the dtype, and reject it scaled by 0.97, with only its
largest entry off by 3%, or (large-mean outputs) with its deviation from the row mean scaled by
0.97. No kernel runs here: this checks the tolerances themselves."""
from __future__ import annotations

import pytest
import torch
from cases import (
    CASE_DTYPES,
    Case,
    assert_close,
    assert_grads_close,
    degenerate_rows,
    double_leaves,
    make_inputs,
    make_statistics,
)

from adain_ext import reference


def _grad_out(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _references(case: Case, dtype):
    """(name, is_gradient, float64 tensor) for every output and gradient of every op, computed by
    the reference from inputs rounded to dtype."""
    content, style = double_leaves(*make_inputs(case, dtype))
    mean, std = double_leaves(*make_statistics(case, dtype))
    u = case.unbiased
    found = []
    out = reference.adain(content, style, case.alpha, unbiased=u)
    found.append(("adain", False, out.detach()))
    grads = torch.autograd.grad(out, (content, style), _grad_out(out.shape, 3))
    found += [("adain grad content", True, grads[0]), ("adain grad style", True, grads[1])]
    out = reference.adain_affine(content, mean, std, unbiased=u)
    found.append(("affine", False, out.detach()))
    grads = torch.autograd.grad(out, (content, mean, std), _grad_out(out.shape, 4))
    found += [("affine grad x", True, grads[0]), ("affine grad mean", True, grads[1]),
              ("affine grad std", True, grads[2])]
    m, s = reference.mean_std(content, unbiased=u)
    found += [("mean", False, m.detach()), ("std", False, s.detach())]
    grads_in = (_grad_out(m.shape, 5), _grad_out(s.shape, 6))
    (grad,) = torch.autograd.grad((m, s), (content,), grads_in)
    found.append(("mean_std grad x", True, grad))
    if degenerate_rows(case):  # content gradients there are rounding residues (see degenerate_rows)
        found = [f for f in found if f[0] not in ("adain grad content", "affine grad x",
                                                   "mean_std grad x")]
    # An all-zero reference (std's gradient when every x_hat is 0, H*W == 1) cannot be scaled wrong.
    return [f for f in found if f[2].abs().max() > 0]


def _largest_entry_off(t: torch.Tensor) -> torch.Tensor:
    bumped = t.clone().flatten()
    i = bumped.abs().argmax()
    bumped[i] = bumped[i] * 0.97
    return bumped.view_as(t)


def _wrong_versions(case: Case, t: torch.Tensor):
    yield "scaled by 0.97", t * 0.97
    yield "largest entry off by 3%", _largest_entry_off(t)
    if case.mean_offset and t.dim() == 4 and t[0, 0].numel() > 1:
        centre = t.mean(dim=(2, 3), keepdim=True)
        yield "deviation from the row mean scaled by 0.97", centre + (t - centre) * 0.97


@pytest.mark.parametrize("case,dtype", CASE_DTYPES)
def test_helpers_reject_a_3_percent_error(case: Case, dtype):
    for name, is_gradient, want in _references(case, dtype):
        def check(got, want=want, is_gradient=is_gradient, name=name):
            if is_gradient:
                assert_grads_close((got.to(dtype),), (want,), dtype, case, msg=name)
            else:
                assert_close(got.to(dtype), want, dtype, msg=name, case=case)

        check(want)  # the reference itself, rounded to dtype, passes
        for how, wrong in _wrong_versions(case, want):
            with pytest.raises(AssertionError):
                check(wrong)
                pytest.fail(f"{name} {how} was accepted")
