"""Every backend against the one float64 oracle (adain_ext/reference.py), over the shared cases of
cases.py in every dtype: the outputs and layouts of adain, mean_std and adain_affine, and every
gradient. Backends: the compiled ops on CPU ("cpp"), the pure-PyTorch "reference" backend, and
Triton ("triton": on the GPU when there is one, else on CPU tensors through the interpreter,
which tests/conftest.py switches on). The CUDA kernels run these checks in test_cuda.py.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from cases import (
    CASE_DTYPES,
    Case,
    assert_close,
    assert_grads_close,
    assert_layout_like,
    double_leaves,
    make_inputs,
    make_statistics,
)

import adain_ext
from adain_ext import reference


def _backend_params():
    cpp_skip = pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")
    try:
        importlib.import_module("adain_ext.triton")
        triton_skip = []
    except ImportError as error:
        triton_skip = [pytest.mark.skip(reason=f"triton is not importable: {error}")]
    triton_device = "cuda" if torch.cuda.is_available() else "cpu"
    return [
        pytest.param("cpp", "cpu", id="cpp", marks=cpp_skip),
        pytest.param("reference", "cpu", id="reference"),
        pytest.param("triton", triton_device, id=f"triton-{triton_device}", marks=triton_skip),
    ]


BACKENDS = _backend_params()


def _backend_case_dtypes():
    """Every backend with every (case, dtype) pair, except the reference backend in float64: that
    is the oracle itself, and comparing it with itself cannot fail."""
    return [
        pytest.param(b.values[0], b.values[1], *cd.values, id=f"{cd.id}-{b.id}",
                     marks=list(b.marks) + list(cd.marks))
        for b in BACKENDS
        for cd in CASE_DTYPES
        if not (b.values[0] == "reference" and cd.values[1] == torch.float64)
    ]


BACKEND_CASE_DTYPES = _backend_case_dtypes()


def _check_layout(out, like, backend):
    if backend == "reference":  # follows PyTorch's own stride propagation
        assert out.shape == like.shape and out.dtype == like.dtype
    else:
        assert_layout_like(out, like)


def _grad_out(shape, dtype, device, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


# ---- Outputs.


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_adain_matches_reference(case: Case, dtype, backend, device):
    content, style = make_inputs(case, dtype, device)
    out = adain_ext.adain(content, style, case.alpha, unbiased=case.unbiased, backend=backend)
    expected = reference.adain(content.double(), style.double(), case.alpha, unbiased=case.unbiased)
    _check_layout(out, content, backend)
    assert_close(out, expected, dtype, case=case)


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_mean_std_matches_reference(case: Case, dtype, backend, device):
    content, _ = make_inputs(case, dtype, device)
    mean, std = adain_ext.mean_std(content, unbiased=case.unbiased, backend=backend)
    ref_mean, ref_std = reference.mean_std(content.double(), unbiased=case.unbiased)
    N, C = case.content[:2]
    for got, want in ((mean, ref_mean), (std, ref_std)):
        assert got.shape == (N, C, *([1] * (len(case.content) - 2)))  # broadcasts against x
        assert got.dtype == dtype and got.is_contiguous()
        assert_close(got, want, dtype, case=case)


@pytest.mark.parametrize("flat", [False, True], ids=["NC11", "NC"])
@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_affine_matches_reference(case: Case, dtype, backend, device, flat):
    x, _ = make_inputs(case, dtype, device)
    mean, std = make_statistics(case, torch.float32, device, flat=flat)  # another dtype than x
    out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, backend=backend)
    expected = reference.adain_affine(x.double(), mean.double(), std.double(),
                                      unbiased=case.unbiased)
    _check_layout(out, x, backend)
    assert_close(out, expected, dtype, case=case)


# ---- Every gradient.


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_adain_gradients(case: Case, dtype, backend, device):
    content, style = make_inputs(case, dtype, device, requires_grad=True)
    out = adain_ext.adain(content, style, case.alpha, unbiased=case.unbiased, backend=backend)
    grad_out = _grad_out(out.shape, dtype, device, 3)
    got = torch.autograd.grad(out, (content, style), grad_out)
    c64, s64 = double_leaves(content, style)
    ref = reference.adain(c64, s64, case.alpha, unbiased=case.unbiased)
    want = torch.autograd.grad(ref, (c64, s64), grad_out.double())
    assert_grads_close(got, want, dtype, case)
    for grad, leaf in zip(got, (content, style), strict=True):
        _check_layout(grad, leaf, backend)


@pytest.mark.parametrize("flat", [False, True], ids=["NC11", "NC"])
@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_affine_gradients(case: Case, dtype, backend, device, flat):
    x, _ = make_inputs(case, dtype, device, requires_grad=True)
    mean, std = make_statistics(case, dtype, device, requires_grad=True, flat=flat)
    out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, backend=backend)
    grad_out = _grad_out(out.shape, dtype, device, 4)
    got = torch.autograd.grad(out, (x, mean, std), grad_out)
    x64, m64, s64 = double_leaves(x, mean, std)
    ref = reference.adain_affine(x64, m64, s64, unbiased=case.unbiased)
    want = torch.autograd.grad(ref, (x64, m64, s64), grad_out.double())
    assert_grads_close(got, want, dtype, case)


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_mean_std_gradients(case: Case, dtype, backend, device):
    x, _ = make_inputs(case, dtype, device, requires_grad=True)
    mean, std = adain_ext.mean_std(x, unbiased=case.unbiased, backend=backend)
    gm, gs = _grad_out(mean.shape, dtype, device, 5), _grad_out(std.shape, dtype, device, 6)
    (got,) = torch.autograd.grad((mean, std), (x,), (gm, gs))
    (x64,) = double_leaves(x)
    rm, rs = reference.mean_std(x64, unbiased=case.unbiased)
    want = torch.autograd.grad((rm, rs), (x64,), (gm.double(), gs.double()))
    assert_grads_close((got,), want, dtype, case)
    # Only one output used: the other's gradient arrives as None.
    (got_std,) = torch.autograd.grad(
        adain_ext.mean_std(x, unbiased=case.unbiased, backend=backend)[1].sum(), x)
    (want_std,) = torch.autograd.grad(reference.mean_std(x64, unbiased=case.unbiased)[1].sum(), x64)
    assert_grads_close((got_std,), (want_std,), dtype, case)
