"""The compiled ops (backend="cpp", CPU here) beyond the per-op checks against the float64 oracle
that every backend gets in test_backends.py: the reference's defaults, gradcheck, opcheck,
torch.compile (also in 16-bit), mixed statistic shapes and dtypes, NaN/Inf, empty tensors. The
split of long rows across threads is tested in test_cpu_split.py."""
from __future__ import annotations

import pytest
import torch
from cases import (
    CASES,
    GRAD_CASES,
    Case,
    assert_close,
    assert_compile_matches_eager,
    check_affine_mixed_statistics,
    make_inputs,
    make_statistics,
    opcheck_samples,
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
                                                 "channels_last", "strided",
                                                 "sequence_channels_last", "volume_channels_last")]
# 16-bit: the statistics the internal ops return are float32 whatever x's dtype, which only a
# 16-bit run tells apart from x's dtype (one case each: both layouts, both variances, alpha).
OPCHECK_16BIT = {"alpha_biased": torch.float16, "channels_last": torch.bfloat16}
OPCHECK_PARAMS = [
    pytest.param(case, dtype, id=f"{case.name}-{str(dtype).split('.')[-1]}")
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    for case in OPCHECK_CASES
    if dtype in (torch.float32, torch.float64) or OPCHECK_16BIT.get(case.name) == dtype
]


@pytest.mark.parametrize("case,dtype", OPCHECK_PARAMS)
def test_opcheck(case: Case, dtype):
    for op, args in opcheck_samples(torch.ops.adain, case, dtype):
        torch.library.opcheck(op, args)


class _AllOps(torch.nn.Module):
    def forward(self, content, style, mean, std):
        a = torch.ops.adain.fused(content, style, 0.8)
        b = adain_ext.adain_affine(content, mean, std)
        m, s = adain_ext.mean_std(style)
        return a + b + m + s


COMPILE_SHAPES = {  # content, style: every rank the ops take
    "4d": ((2, 4, 8, 8), (2, 4, 5, 7)),
    "3d": ((2, 4, 9), (2, 4, 5)),
    "5d": ((2, 4, 3, 4, 2), (2, 4, 2, 3, 3)),
}


@pytest.mark.parametrize("rank,layout,dtype", [("4d", "contiguous", torch.float32),
                                               ("4d", "channels_last", torch.float32),
                                               ("4d", "contiguous", torch.float16),
                                               ("4d", "channels_last", torch.bfloat16),
                                               ("3d", "contiguous", torch.float32),
                                               ("3d", "channels_last", torch.float16),
                                               ("5d", "contiguous", torch.float32),
                                               ("5d", "channels_last", torch.float32)], ids=str)
def test_torch_compile_fullgraph(rank, layout, dtype):
    content_shape, style_shape = COMPILE_SHAPES[rank]
    case = Case("compile", content_shape, style=style_shape, layout=layout)
    content, style = make_inputs(case, dtype, requires_grad=True)
    mean, std = make_statistics(case, dtype, requires_grad=True)
    assert_compile_matches_eager(_AllOps(), (content, style, mean, std))


# adain_affine's target statistics may be (N, C) or (N, C, 1, 1), each in any float dtype; their
# gradients must come back in their own shape and dtype.
MIXED_STATISTICS = [  # x dtype, (mean shape, mean dtype), (std shape, std dtype)
    (torch.float32, ("NC", torch.float16), ("NC11", torch.float64)),
    (torch.bfloat16, ("NC11", torch.float32), ("NC", torch.bfloat16)),
    (torch.float16, ("NC", torch.float32), ("NC11", torch.float32)),
    (torch.float64, ("NC11", torch.float32), ("NC", torch.float64)),
]


def _less_precise(a, b):
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


def _mixed_id(params):
    x_dtype, (m_shape, m_dtype), (s_shape, s_dtype) = params
    x, m, s = (str(d).split(".")[-1] for d in (x_dtype, m_dtype, s_dtype))
    return f"x_{x}-mean_{m_shape}_{m}-std_{s_shape}_{s}"


@pytest.mark.parametrize("x_dtype,mean_like,std_like", MIXED_STATISTICS,
                         ids=[_mixed_id(p) for p in MIXED_STATISTICS])
def test_affine_mixed_statistic_shapes_and_dtypes(x_dtype, mean_like, std_like):
    case = Case("mixed", (2, 3, 9, 11), layout="channels_last")
    x, _ = make_inputs(case, x_dtype, requires_grad=True)
    N, C = case.content[:2]
    stats = make_statistics(case, torch.float64)
    mean, std = (t.detach().reshape((N, C) if shape == "NC" else (N, C, 1, 1)).to(dtype)
                 .requires_grad_() for t, (shape, dtype) in zip(stats, (mean_like, std_like)))
    check_affine_mixed_statistics(x, mean, std, "cpp", case)
    if x_dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(torch.ops.adain._affine_forward.default,
                              (x, mean, std, 0.7, 1e-5, True))


def test_torch_compile_inductor_matches_eager():
    case = Case("inductor", (2, 4, 8, 8), style=(2, 4, 6, 6))
    content, style = make_inputs(case)
    torch._dynamo.reset()
    compiled = torch.compile(lambda c, s: torch.ops.adain.fused(c, s) * 2 + 1, fullgraph=True)
    torch.testing.assert_close(compiled(content, style), torch.ops.adain.fused(content, style) * 2 + 1)


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


@pytest.mark.parametrize("backend", ["reference"] + (["cpp"] if adain_ext.HAS_CPP else []))
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (0, 0, 1, 1)])
def test_empty_batch_or_channels(shape, backend):
    """Every backend returns empty results for N = 0 or C = 0 (none raises where another does not)."""
    x = torch.randn(shape)
    style = torch.randn(shape)
    assert adain_ext.adain(x, style, backend=backend).shape == shape
    mean, std = adain_ext.mean_std(x, backend=backend)
    assert mean.shape == std.shape == (shape[0], shape[1], 1, 1)
    assert adain_ext.adain_affine(x, mean, std, backend=backend).shape == shape


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
