"""The edge cases of the one row math, run through every backend available here (from the backend
registry) against the reference: the alpha blend at 0 and 1, non-finite target statistics, and
rows of zero variance with eps = 0. Each backend must give the reference's numbers and the
reference's NaN/Inf pattern, row by row (a NaN in one (n, c) row stays in that row)."""
from __future__ import annotations

import pytest
import torch

import adain_ext
from adain_ext import backends, reference

DEVICE_BACKENDS = [
    pytest.param(name, device, id=f"{name}-{device}")
    for name, entry in backends.REGISTRY.items()
    for device in entry.devices
    if device in backends.present_device_types() and entry.why_unavailable(device) is None
]
DTYPES = [torch.float32, torch.float64]
# Measured against the float64 reference: fp32 kernels agree to 1.2e-6 relative on these rows.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def _inputs(dtype, device, shape=(2, 3, 4, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    content = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    style = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 - 1
    return content.to(device, dtype), style.to(device, dtype)


def _same(got, want, dtype):
    """Values equal to the tolerance and the same non-finite entries (NaN where NaN, +-Inf where
    +-Inf), so a backend cannot turn a NaN row into numbers or leak it into another row."""
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), "NaN pattern differs"
    finite = torch.isfinite(want)
    assert torch.equal(got[~finite & ~torch.isnan(want)], want[~finite & ~torch.isnan(want)]), \
        "Inf entries differ"
    torch.testing.assert_close(got[finite], want[finite], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", DEVICE_BACKENDS)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_ends(alpha, backend, device, dtype):
    """alpha 0 gives the content back; alpha 1 is AdaIN itself; gradients follow."""
    content, style = _inputs(dtype, device)
    content.requires_grad_()
    style.requires_grad_()
    out = adain_ext.adain(content, style, alpha, backend=backend)
    want = reference.adain(content.detach().double(), style.detach().double(), alpha)
    _same(out, want, dtype)
    if alpha == 0.0:
        _same(out, content, dtype)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    grads = torch.autograd.grad(out, (content, style), g)
    c64, s64 = (t.detach().double().requires_grad_() for t in (content, style))
    want_grads = torch.autograd.grad(reference.adain(c64, s64, alpha), (c64, s64), g.double())
    for got, expected in zip(grads, want_grads, strict=True):
        _same(got, expected, dtype)
    if alpha == 0.0:  # the output is the content: its gradient is g, the style's is 0
        _same(grads[0], g, dtype)
        assert not grads[1].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", DEVICE_BACKENDS)
@pytest.mark.parametrize("stat,value", [("mean", float("nan")), ("std", float("nan")),
                                        ("mean", float("inf")), ("std", float("inf")),
                                        ("std", 0.0)], ids=str)
def test_non_finite_or_zero_target_statistics(stat, value, backend, device, dtype):
    """A non-finite target statistic in row (0, 1) spoils that row only, as in the reference; a
    target std of 0 gives the target mean exactly."""
    x, _ = _inputs(dtype, device)
    gen = torch.Generator().manual_seed(5)
    mean = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(device, dtype)
    std = (torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.5).to(device, dtype)
    (mean if stat == "mean" else std)[0, 1] = value
    out = adain_ext.adain_affine(x, mean, std, backend=backend)
    want = reference.adain_affine(x.double(), mean.double(), std.double())
    _same(out, want, dtype)
    if stat == "std" and value == 0.0:
        assert torch.equal(out[0, 1], torch.full_like(out[0, 1], mean[0, 1].item()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", DEVICE_BACKENDS)
def test_zero_variance_rows_with_eps_zero(backend, device, dtype):
    """eps = 0: a constant content row has std 0 and normalises to 0/0 = NaN (that row only, as
    in the reference); a constant style row has std 0, so its output row is the style mean."""
    content, style = _inputs(dtype, device)
    content[0, 2] = 1.25  # constant content row
    style[1, 0] = -0.75  # constant style row
    out = adain_ext.adain(content, style, 1.0, 0.0, backend=backend)
    want = reference.adain(content.double(), style.double(), 1.0, 0.0)
    assert torch.isnan(want[0, 2]).all() and torch.isfinite(want[1]).all()
    _same(out, want, dtype)
    assert torch.equal(out[1, 0], torch.full_like(out[1, 0], -0.75))
    mean, std = adain_ext.mean_std(content, 0.0, backend=backend)
    assert mean[0, 2].item() == 1.25 and std[0, 2].item() == 0.0
