"""The shared case list and tolerances every backend's tests use (one list, reused by the
correctness, gradient and opcheck tests of every backend)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import adain_ext
from adain_ext import backends, reference


@dataclasses.dataclass(frozen=True)
class Target:
    """One backend of the registry on one device type it has kernels for."""

    backend: str
    device: str

    def __str__(self):
        return f"{self.backend}-{self.device}"


def targets(with_reference: bool = False) -> list:
    """Every (backend, device type) of adain_ext.backends.REGISTRY, as pytest params with ids such
    as "cpp-cuda" and "triton-cpu"; one that cannot run here is skipped with the reason (no such
    device here, or the registry's: extension not built, Triton not installed, interpreter off).
    The reference backend is the oracle the others are held to: only with_reference adds it."""
    params = []
    for entry in backends.REGISTRY.values():
        if entry.name == "reference" and not with_reference:
            continue
        for device in entry.devices:
            if device not in backends.present_device_types():
                why = f"no {device} device here (torch.cuda.is_available() is False)"
            else:
                why = entry.why_unavailable(device)
            target = Target(entry.name, device)
            marks = [pytest.mark.skip(reason=f"{target}: {why}")] if why else []
            params.append(pytest.param(target, id=str(target), marks=marks))
    return params


def auto_is(target: Target) -> bool:
    """Whether backend="auto" (every function's default) runs this target's backend here."""
    return (target.device in backends.present_device_types()
            and backends.auto_backend(target.device) == target.backend)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    content: tuple  # (N, C, *): (N, C, H, W), (N, C, T), (N, C, D, H, W)
    style: tuple | None = None  # None: same shape as content
    alpha: float = 1.0
    unbiased: bool = True
    # "contiguous", "channels_last" (C innermost: channels_last, channels_last_3d, (N, T, C) memory)
    # or "strided" (a non-contiguous view)
    layout: str = "contiguous"
    style_layout: str | None = None  # the style's layout; None: the content's
    mean_offset: float = 0.0  # added to the data: large-mean inputs test the statistics' accuracy
    dtypes: tuple = ()  # dtypes this case runs in; () means all of DTYPES

    @property
    def style_shape(self):
        return self.style or self.content

    def __str__(self):
        return self.name


CASES = [
    Case("tiny", (1, 1, 2, 1)),
    Case("tiny_biased", (1, 2, 1, 1), unbiased=False),
    Case("odd", (2, 3, 33, 17)),
    Case("odd_style_other_size", (2, 3, 33, 17), style=(2, 3, 7, 5)),
    Case("alpha", (2, 4, 9, 11), alpha=0.3),
    Case("alpha_biased", (2, 4, 9, 11), style=(2, 4, 5, 6), alpha=0.7, unbiased=False),
    Case("channels_last", (2, 5, 7, 9), style=(2, 5, 4, 3), layout="channels_last"),
    Case("channels_last_alpha", (3, 16, 6, 5), alpha=0.5, layout="channels_last"),
    Case("strided", (2, 3, 10, 12), layout="strided"),
    # fp16/bf16 cannot hold 1e4 + N(0, 1) to better than 8 (or 64): only the wider types.
    Case("large_mean", (2, 3, 16, 16), mean_offset=1e4, dtypes=("float32", "float64")),
    Case("long_rows", (1, 2, 64, 70)),  # few long rows: split across threads/blocks
    Case("many_rows", (4, 64, 4, 4)),  # many tiny rows: packed
    # Other ranks: statistics over every trailing dim (sequences (N, C, T), volumes (N, C, D, H, W)).
    Case("sequence", (2, 5, 19), style=(2, 5, 7)),
    Case("sequence_channels_last", (3, 6, 13), alpha=0.6, unbiased=False, layout="channels_last"),
    Case("volume", (2, 3, 4, 5, 3), style=(2, 3, 2, 3, 5)),
    Case("volume_channels_last", (2, 4, 3, 2, 5), style=(2, 4, 5, 1, 3), alpha=0.4,
         layout="channels_last"),
    Case("volume_strided", (1, 3, 3, 4, 6), layout="strided"),
    Case("style_of_another_rank", (2, 3, 6, 5), style=(2, 3, 17)),
    # Content and style in different layouts: the paths that take one layout for both (one
    # region, one launch) must not read the style with the content's strides.
    Case("channels_last_content_contiguous_style", (2, 6, 5, 7), alpha=0.7, layout="channels_last",
         style_layout="contiguous"),
    Case("contiguous_content_channels_last_style", (2, 6, 4, 5), style=(2, 6, 3, 7),
         unbiased=False, style_layout="channels_last"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (case, dtype) pairs for tests that run every case in every dtype it supports.
CASE_DTYPES = [
    pytest.param(case, dtype, id=f"{case.name}-{str(dtype).split('.')[-1]}")
    for case in CASES
    for dtype in DTYPES
    if not case.dtypes or str(dtype).split(".")[-1] in case.dtypes
]

# Cases small enough for float64 gradcheck.
GRAD_CASES = [c for c in CASES if c.name not in ("long_rows", "many_rows")]

# (atol, rtol) against the float64 reference, for outputs and gradients. atol is relative to the
# largest expected magnitude (see _magnitude), so a gradient of size 0.01 is held to the same
# relative accuracy as one of size 10. Measured on the CPU kernels over every case, op and gradient,
# max |error| / (max|expected| + |expected|) is 2.6e-3 in bf16, 2.9e-4 in fp16 and 1.7e-7 in fp32:
# the 16-bit budgets leave about 4x, and every budget rejects a 3% error in the largest entry
# (tests/test_tolerances.py). fp32 keeps room for two fp32 kernels that sum a large-mean row in
# different orders (tools/cuda_emu compares the CUDA kernels with the CPU ones: 2.6e-3 on outputs
# of size 10 at mean 1e4).
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (1.5e-3, 1.5e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def degenerate_rows(case: Case) -> bool:
    """True when content rows hold at most 2 values: instance-normalising them gives +-1 (or 0)
    whatever the input, so the content gradient is the rounding residue of terms of size up to
    |grad_out| * target std / row std (about 10 here) that cancel, not a value a relative tolerance
    can hold (1/sqrt(eps) amplifies it when a row has one element)."""
    return math.prod(case.content[2:]) <= 2


def _gradient_floor(case: Case | None, expected: torch.Tensor) -> float:
    """The magnitude atol is relative to at least: 0 (atol relative to the largest entry); 10 for a
    cancellation residue of degenerate rows (below 1e-3 where the terms are of size 1 to 10); 1 when
    the caller gives no case (then degenerate rows cannot be told apart)."""
    if case is None:
        return 1.0
    if degenerate_rows(case) and _magnitude(expected, 0.0) < 1e-3:
        return 10.0
    return 0.0


def _magnitude(expected: torch.Tensor, floor: float) -> float:
    return max(floor, expected.abs().max().item()) if expected.numel() else floor


def _centred(actual: torch.Tensor, expected: torch.Tensor, case: Case | None):
    """Large-mean outputs as deviations from each expected row mean: rtol * |1e4| would hide any
    error in the normalised term."""
    if case is None or not case.mean_offset or expected.dim() != 4 or expected[0, 0].numel() < 2:
        return actual, expected
    centre = expected.mean(dim=(2, 3), keepdim=True)
    return actual - centre, expected - centre


def _large_mean_slack(case: Case | None, dtype) -> float:
    # A row mean of size M is stored to M * 2^-24 in fp32: that much error in x - mean is
    # inherent to fp32 statistics (the paper's own code in fp32 has it too).
    return abs(case.mean_offset) * torch.finfo(dtype).eps * 4 if case is not None else 0.0


def channels_last_order(rank: int) -> list[int]:
    """The dims of a (N, C, *) tensor from outermost to innermost in memory when C is innermost."""
    return [0, *range(2, rank), 1]


def is_channels_last(t: torch.Tensor) -> bool:
    return t.permute(channels_last_order(t.dim())).is_contiguous()


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":  # channels_last (4-D), channels_last_3d (5-D), (N, T, C) (3-D)
        order = channels_last_order(t.dim())
        return t.permute(order).contiguous().permute([order.index(d) for d in range(t.dim())])
    if layout == "strided":  # every other column of a wider tensor: neither layout the kernels keep
        wide = torch.cat([t, t], dim=-1)
        return wide[..., ::2].copy_(t)
    return t.contiguous()


def make_tensor(shape, case: Case, dtype=torch.float32, device="cpu", seed=0, requires_grad=False,
                layout: str | None = None):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 0.5 + case.mean_offset
    t = _layout(base.to(device=device, dtype=dtype), layout or case.layout)
    return t.requires_grad_(requires_grad)


def make_inputs(case: Case, dtype=torch.float32, device="cpu", requires_grad=False):
    """(content, style) for a case, drawn from a seed derived from the case name."""
    seed = sum(map(ord, case.name))
    content = make_tensor(case.content, case, dtype, device, seed, requires_grad)
    style = make_tensor(case.style_shape, case, dtype, device, seed + 1, requires_grad,
                        case.style_layout)
    return content, style


def make_statistics(case: Case, dtype=torch.float32, device="cpu", requires_grad=False, flat=False):
    """Target (mean, std) for adain_affine: std strictly positive."""
    N, C = case.content[:2]
    gen = torch.Generator().manual_seed(7 + sum(map(ord, case.name)))
    shape = (N, C) if flat else (N, C, *([1] * (len(case.content) - 2)))
    mean = torch.randn(shape, generator=gen, dtype=torch.float64)
    std = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 + 0.2
    return (mean.to(device, dtype).requires_grad_(requires_grad),
            std.to(device, dtype).requires_grad_(requires_grad))


def assert_close(actual, expected, dtype, msg="", case: Case | None = None):
    """An output against the float64 reference: TOLERANCES, atol relative to the largest expected
    value (large-mean outputs centred first, plus the large-mean slack)."""
    atol, rtol = TOLERANCES[dtype]
    got, want = _centred(actual.double(), expected.double().to(actual.device), case)
    atol = atol * _magnitude(want, 0.0) + _large_mean_slack(case, dtype)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=msg or None)


def assert_grads_close(got, want, dtype, case: Case | None = None, msg: str = ""):
    """Gradients against float64 ones, with TOLERANCES: atol relative to each gradient's largest
    entry, or to the floor of _gradient_floor. The large-mean slack is relative here: it is an
    error in x - mean, which reaches a gradient through x_hat = (x - mean) / std, in proportion."""
    atol, rtol = TOLERANCES[dtype]
    atol += _large_mean_slack(case, dtype)
    for g, w in zip(got, want, strict=True):
        assert g is not None and g.dtype == dtype and g.shape == w.shape
        w = w.double().to(g.device)
        scale = _magnitude(w, _gradient_floor(case, w))
        torch.testing.assert_close(g.double(), w, rtol=rtol, atol=atol * scale,
                                   msg=(lambda m: f"{msg}: {m}") if msg else None)


def assert_matches_oracle(op: str, inputs, outputs, grads, grad_outputs, dtype,
                          case: Case | None = None, **options):
    """The outputs of `op` (a name in adain_ext.reference) computed from `inputs`, and the
    gradients `grads` of those inputs for `grad_outputs`, against the float64 reference given
    the same inputs and options."""
    leaves = double_leaves(*inputs)
    ref = getattr(reference, op)(*leaves, **options)
    refs = ref if isinstance(ref, tuple) else (ref,)
    outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
    for out, want in zip(outputs, refs, strict=True):
        assert_close(out, want, dtype, case=case)
    want = torch.autograd.grad(refs, leaves, [g.double() for g in grad_outputs])
    assert_grads_close(grads, want, dtype, case)


def check_affine_mixed_statistics(x, mean, std, backend: str, case: Case):
    """adain_affine(x, mean, std) with statistics of their own shapes ((N, C) or (N, C, 1, 1))
    and dtypes: the output in x's dtype, and each gradient in its input's shape and dtype, against
    the float64 reference (gradients at the tolerance of the less precise of x's and their own
    dtype)."""
    out = adain_ext.adain_affine(x, mean, std, backend=backend)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(x.device,
                                                                                     x.dtype)
    got = torch.autograd.grad(out, (x, mean, std), grad_out)
    leaves = double_leaves(x, mean, std)
    ref = reference.adain_affine(*leaves)
    want = torch.autograd.grad(ref, leaves, grad_out.double())
    assert out.dtype == x.dtype
    assert_close(out, ref, x.dtype)
    for g, w, leaf in zip(got, want, (x, mean, std)):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype
        loose = x.dtype if torch.finfo(x.dtype).eps >= torch.finfo(leaf.dtype).eps else leaf.dtype
        assert_grads_close((g.to(loose),), (w,), loose, case)


def double_leaves(*tensors):
    """float64 copies of tensors as new autograd leaves (for the reference's gradients)."""
    return [t.detach().double().requires_grad_() for t in tensors]


def expected_channels_last(t: torch.Tensor) -> bool:
    """Whether the kernels give an output for input t in channels last (C innermost): they keep
    channels last and make anything else (strided) contiguous; contiguous wins when t is both."""
    return not t.is_contiguous() and is_channels_last(t)


def assert_layout_like(out: torch.Tensor, like: torch.Tensor):
    assert out.shape == like.shape and out.dtype == like.dtype and out.device == like.device
    if expected_channels_last(like):
        assert is_channels_last(out), f"channels last expected, got strides {out.stride()}"
    else:
        assert out.is_contiguous(), f"contiguous expected, got strides {out.stride()}"


def assert_compile_matches_eager(model, inputs):
    """torch.compile(fullgraph=True) of model: no graph break, and its output and the gradients of
    every input equal eager's (aot_eager, so AOTAutograd traces the ops' registered autograd)."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    eager_out = model(*inputs)
    torch.testing.assert_close(compiled(*inputs), eager_out)
    eager_grads = torch.autograd.grad(eager_out.sum(), inputs)
    compiled_grads = torch.autograd.grad(compiled(*inputs).sum(), inputs)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)


def opcheck_samples(ops, case: Case, dtype, device="cpu"):
    """(op overload, args) for torch.library.opcheck: every op of the namespace `ops`
    (torch.ops.adain or torch.ops.adain_triton) that it has, the backward ops with inputs a real
    forward hands them."""
    content, style = make_inputs(case, dtype, device, requires_grad=True)
    mean, std = make_statistics(case, dtype, device, requires_grad=True)
    u, alpha = case.unbiased, case.alpha
    samples = [
        (ops.mean_std.default, (content, 1e-5, u)),
        (ops._fused_forward.default, (content, style, alpha, 1e-5, u)),
        (ops._affine_forward.default, (content, mean, std, alpha, 1e-5, u)),
    ]
    if hasattr(ops, "fused"):
        samples += [(ops.fused.default, (content, style, alpha, 1e-5, u)),
                    (ops.affine.default, (content, mean, std, 1e-5, u))]
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(content.shape, generator=gen).to(device, dtype)
    with torch.no_grad():
        _out, mean_x, std_x = ops._affine_forward(content, mean, std, alpha, 1e-5, u)
        _out, c_mean, c_std, s_mean, s_std = ops._fused_forward(content, style, alpha, 1e-5, u)
        public_stats = ops.mean_std(style, 1e-5, u)
        content_stats = ops.mean_std(content, 1e-5, u)
    samples.append((ops._affine_backward.default,
                    (grad, content.detach(), mean_x, std_x, std.detach(), alpha, u)))
    # The statistics mean_std's backward gets: mean_std's own ((N, C, 1, 1), x's dtype) and the
    # fused forward's ((N, C), float32); of the style, and of the content (another length where
    # the case's style has another shape).
    for x, (m, sd) in ((style, public_stats), (style, (s_mean, s_std)), (content, content_stats)):
        grad_mean, grad_std = (torch.randn(m.shape, generator=gen).to(device, m.dtype)
                               for _ in range(2))
        samples.append((ops._mean_std_backward.default, (grad_mean, grad_std, x.detach(), m, sd, u)))
    if hasattr(ops, "_fused_backward"):
        samples.append((ops._fused_backward.default,
                        (grad, content.detach(), style.detach(), c_mean, c_std, s_mean, s_std,
                         alpha, u)))
    return samples
