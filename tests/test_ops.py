"""The compiled ops (backend="cpp", CPU here) beyond the per-op checks against the float64 oracle
that every backend gets in test_backends.py: the seed's defaults, gradcheck, opcheck,
torch.compile, thread splits, NaN/Inf, empty tensors."""
from __future__ import annotations

import pytest
import torch
from cases import (
    CASES,
    GRAD_CASES,
    Case,
    assert_close,
    assert_compile_matches_eager,
    assert_grads_close,
    double_leaves,
    make_inputs,
    make_statistics,
)

import adain_ext
from adain_ext import reference

pytestmark = pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")

def test_defaults_are_the_seed_calc_mean_std_and_adain():
    content, style = make_inputs(Case("seed", (2, 8, 12, 10), style=(2, 8, 6, 9)), torch.float64)
    torch.testing.assert_close(adain_ext.mean_std(content), reference.calc_mean_std(content))
    torch.testing.assert_close(adain_ext.adain(content, style),
                               reference.adaptive_instance_normalization(content, style))
    torch.testing.assert_close(torch.ops.adain.fused(content, style),
                               reference.adaptive_instance_normalization(content, style))


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradcheck_float64(case: Case):
    content, style = make_inputs(case, torch.float64, requires_grad=True)
    mean, std = make_statistics(case, torch.float64, requires_grad=True)
    kw = dict(unbiased=case.unbiased, backend="cpp")
    assert torch.autograd.gradcheck(lambda c, s: adain_ext.adain(c, s, case.alpha, **kw),
                                    (content, style))
    assert torch.autograd.gradcheck(lambda x, m, s: adain_ext.adain_affine(x, m, s, **kw),
                                    (content, mean, std))
    assert torch.autograd.gradcheck(lambda x: adain_ext.mean_std(x, **kw), (content,))


OPCHECK_CASES = [c for c in CASES if c.name in ("tiny", "odd_style_other_size", "alpha_biased",
                                                 "channels_last", "strided")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck(case: Case, dtype):
    content, style = make_inputs(case, dtype, requires_grad=True)
    mean, std = make_statistics(case, dtype, requires_grad=True)
    u = case.unbiased
    ops = torch.ops.adain
    samples = [
        (ops.mean_std.default, (content, 1e-5, u)),
        (ops._fused_forward.default, (content, style, case.alpha, 1e-5, u)),
        (ops._affine_forward.default, (content, mean, std, case.alpha, 1e-5, u)),
        (ops.fused.default, (content, style, case.alpha, 1e-5, u)),
        (ops.affine.default, (content, mean, std, 1e-5, u)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)
    # The backward ops, with inputs a real forward would hand them.
    with torch.no_grad():
        _out, x_mean, x_std = ops._affine_forward(content, mean, std, case.alpha, 1e-5, u)
        s_mean, s_std = ops.mean_std(style, 1e-5, u)
    grad = torch.randn_like(content)
    torch.library.opcheck(ops._affine_backward.default,
                          (grad, content.detach(), x_mean, x_std, std.detach(), case.alpha, u))
    torch.library.opcheck(ops._mean_std_backward.default,
                          (torch.randn_like(s_mean), torch.randn_like(s_std), style.detach(),
                           s_mean, s_std, u))
    with torch.no_grad():
        _out, c_mean, c_std, s_mean32, s_std32 = ops._fused_forward(content, style, case.alpha, 1e-5, u)
    torch.library.opcheck(ops._fused_backward.default,
                          (grad, content.detach(), style.detach(), c_mean, c_std, s_mean32, s_std32,
                           case.alpha, u))


class _AllOps(torch.nn.Module):
    def forward(self, content, style, mean, std):
        a = torch.ops.adain.fused(content, style, 0.8)
        b = adain_ext.adain_affine(content, mean, std)
        m, s = adain_ext.mean_std(style)
        return a + b + m + s


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_torch_compile_fullgraph(layout):
    case = Case("compile", (2, 4, 8, 8), style=(2, 4, 5, 7), layout=layout)
    content, style = make_inputs(case, requires_grad=True)
    mean, std = make_statistics(case, requires_grad=True)
    assert_compile_matches_eager(_AllOps(), (content, style, mean, std))


def test_torch_compile_inductor_matches_eager():
    case = Case("inductor", (2, 4, 8, 8), style=(2, 4, 6, 6))
    content, style = make_inputs(case)
    torch._dynamo.reset()
    compiled = torch.compile(lambda c, s: torch.ops.adain.fused(c, s) * 2 + 1, fullgraph=True)
    torch.testing.assert_close(compiled(content, style), torch.ops.adain.fused(content, style) * 2 + 1)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("threads", [1, 4])
def test_split_rows_match_whole_rows(layout, threads):
    """Few long rows are split across threads and merged with Chan's formula; the merged result
    must agree with the reference whatever the thread count."""
    case = Case("split", (1, 3, 160, 150), style=(1, 3, 90, 200), alpha=0.6, layout=layout,
                mean_offset=50.0)
    content, style = make_inputs(case, requires_grad=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = adain_ext.adain(content, style, case.alpha)
        grads = torch.autograd.grad(out, (content, style), torch.ones_like(out))
    finally:
        torch.set_num_threads(previous)
    c64, s64 = double_leaves(content, style)
    ref = reference.adain(c64, s64, case.alpha)
    assert_close(out, ref, torch.float32)
    want = torch.autograd.grad(ref, (c64, s64), torch.ones_like(ref))
    assert_grads_close(grads, want, torch.float32)


def test_large_mean_statistics_are_accurate():
    x = 1e4 + torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    _, std = adain_ext.mean_std(x, backend="cpp")
    _, ref_std = reference.mean_std(x.double())
    assert (std.double() - ref_std).abs().max() < 1e-3


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_inf_stay_in_their_row(layout):
    case = Case("nan", (2, 4, 6, 5), layout=layout)
    content, style = make_inputs(case)
    content[0, 1, 2, 3] = float("nan")
    style[1, 2, 0, 0] = float("inf")
    out = adain_ext.adain(content, style, backend="cpp")
    bad = torch.zeros(2, 4, dtype=torch.bool)
    bad[0, 1] = bad[1, 2] = True
    assert out[bad].isnan().all()
    assert out[~bad].isfinite().all()
    clean = reference.adain(content.double(), style.double())
    assert_close(out[~bad], clean[~bad], torch.float32)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (0, 0, 1, 1)])
def test_empty_batch_or_channels(shape):
    x = torch.randn(shape)
    style = torch.randn(shape)
    assert adain_ext.adain(x, style).shape == shape
    mean, std = adain_ext.mean_std(x)
    assert mean.shape == (shape[0], shape[1], 1, 1)
    assert adain_ext.adain_affine(x, mean, std).shape == shape


def test_module_form():
    case = Case("module", (2, 3, 8, 8))
    content, style = make_inputs(case)
    module = adain_ext.nn.AdaIN(alpha=0.5)
    assert "alpha=0.5" in repr(module)
    assert_close(module(content, style), reference.adain(content.double(), style.double(), 0.5),
                 torch.float32)


def test_style_statistics_can_be_reused_through_affine():
    case = Case("reuse", (2, 6, 9, 7), style=(2, 6, 11, 5))
    content, style = make_inputs(case)
    mean, std = adain_ext.mean_std(style)
    torch.testing.assert_close(adain_ext.adain_affine(content, mean, std),
                               adain_ext.adain(content, style))
