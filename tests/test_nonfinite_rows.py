"""Rows whose statistics overflow: every compiled backend (C++ and Triton, on every device)
follows the reference's one rule.

A float32 row of values near +-3e19 has a finite mean but an infinite std (its variance
overflows). The reference then gives that row (x - mean) / inf * std_s + mean_s = the style's
mean, a finite output. At alpha == 1 the kernels use the target statistics as they are (no
blend with the row's own: 1 * std_s + 0 * inf would be NaN), so they agree with it. Other rows
are never affected. (At alpha < 1 the blend itself is inf / inf: such rows are NaN in the
kernels, a documented limit, while the reference blends outputs instead of statistics.)
"""
from __future__ import annotations

import pytest
import torch
from cases import targets

import adain_ext
from adain_ext import reference


def _overflowing_inputs(device):
    gen = torch.Generator().manual_seed(11)
    content = torch.randn(2, 3, 8, 8, generator=gen)
    style = torch.randn(2, 3, 5, 7, generator=gen)
    signs = torch.randint(0, 2, (8, 8), generator=gen) * 2 - 1
    content[0, 1] = signs * 3e19  # mean finite, variance overflows float32
    content[1, 2, 3, 4] = float("inf")  # mean and variance infinite
    return content.to(device), style.to(device)


@pytest.mark.parametrize("target", targets())
def test_infinite_std_row_at_alpha_one_matches_reference(target):
    backend, device = target.backend, target.device
    content, style = _overflowing_inputs(device)
    _, content_std = reference.mean_std(content)
    assert content_std[0, 1].isinf().all() and content_std[0, 0].isfinite().all()
    want = reference.adain(content, style, 1.0)
    got = adain_ext.adain(content, style, 1.0, backend=backend)
    # The overflowing row is the style's mean (finite), the Inf row NaN, as in the reference.
    assert got[0, 1].isfinite().all()
    torch.testing.assert_close(got, want, equal_nan=True, atol=2e-5, rtol=2e-5)
    mean, std = reference.mean_std(style)
    got_affine = adain_ext.adain_affine(content, mean, std, backend=backend)
    torch.testing.assert_close(got_affine, want, equal_nan=True, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("target", targets())
def test_nonfinite_rows_leave_the_others_alone(target):
    backend, device = target.backend, target.device
    content, style = _overflowing_inputs(device)
    for alpha in (1.0, 0.5):
        got = adain_ext.adain(content, style, alpha, backend=backend)
        clean = torch.ones(2, 3, dtype=torch.bool)
        clean[0, 1] = clean[1, 2] = False
        want = reference.adain(content.double(), style.double(), alpha)
        torch.testing.assert_close(got[clean.to(device)].double(), want[clean.to(device)],
                                   atol=2e-5, rtol=2e-5)


def _grad_out(like):
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(3)).to(like.device)


@pytest.mark.parametrize("target", targets())
def test_gradients_of_nonfinite_rows_at_alpha_one_match_reference(target):
    """The backward follows the same rule: at alpha == 1 the target statistics are used as they
    are, so the overflowing row's content gradient is 0 (its output does not depend on it) and
    the style gradient of that row is finite, as in the reference; the Inf row is NaN in both.
    A backward that blends 1 * std_s + 0 * inf gives NaN there instead."""
    backend, device = target.backend, target.device
    content, style = _overflowing_inputs(device)
    content.requires_grad_()
    style.requires_grad_()
    grad_out = _grad_out(content)
    got = torch.autograd.grad(adain_ext.adain(content, style, 1.0, backend=backend),
                              (content, style), grad_out)
    want = torch.autograd.grad(reference.adain(content, style, 1.0), (content, style), grad_out)
    assert (got[0][0, 1] == 0).all() and got[1][0, 1].isfinite().all()
    for g, w, name in zip(got, want, ("content", "style")):
        torch.testing.assert_close(g, w, equal_nan=True, atol=2e-5, rtol=2e-5, msg=name)
    # adain_affine with the style's statistics as the targets: gradients of x, mean and std.
    mean, std = (t.detach().requires_grad_() for t in reference.mean_std(style.detach()))
    got = torch.autograd.grad(adain_ext.adain_affine(content, mean, std, backend=backend),
                              (content, mean, std), grad_out)
    want = torch.autograd.grad(reference.adain_affine(content, mean, std), (content, mean, std),
                               grad_out)
    assert (got[0][0, 1] == 0).all() and got[1][0, 1].isfinite().all()
    assert got[2][0, 1].isfinite().all()
    for g, w, name in zip(got, want, ("x", "mean", "std")):
        torch.testing.assert_close(g, w, equal_nan=True, atol=2e-5, rtol=2e-5, msg=name)


@pytest.mark.parametrize("target", targets())
def test_gradients_of_nonfinite_rows_leave_the_others_alone(target):
    """At alpha < 1 too (where the non-finite rows' own gradients are NaN), every other row's
    gradient matches the float64 reference."""
    backend, device = target.backend, target.device
    content, style = _overflowing_inputs(device)
    content.requires_grad_()
    style.requires_grad_()
    grad_out = _grad_out(content)
    clean = torch.ones(2, 3, dtype=torch.bool)
    clean[0, 1] = clean[1, 2] = False
    c64, s64 = (t.detach().double().requires_grad_() for t in (content, style))
    for alpha in (1.0, 0.5):
        got = torch.autograd.grad(adain_ext.adain(content, style, alpha, backend=backend),
                                  (content, style), grad_out)
        want = torch.autograd.grad(reference.adain(c64, s64, alpha), (c64, s64), grad_out.double())
        for g, w in zip(got, want):
            w = w[clean]
            torch.testing.assert_close(g[clean.to(device)].double(), w.to(device),
                                       atol=2e-5 * w.abs().max().item(), rtol=2e-5)
