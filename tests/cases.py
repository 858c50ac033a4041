"""The shared case list and tolerances every backend's tests use (one list, reused by the
correctness, gradient and opcheck tests of every backend)."""
from __future__ import annotations

import dataclasses

import pytest
import torch


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    content: tuple  # (N, C, H, W)
    style: tuple | None = None  # None: same shape as content
    alpha: float = 1.0
    unbiased: bool = True
    layout: str = "contiguous"  # "contiguous", "channels_last" or "strided" (a non-contiguous view)
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

# (atol, rtol) against the float64 reference, for outputs and gradients.
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (1e-1, 5e-2),
}


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor: neither layout the kernels keep
        wide = torch.cat([t, t], dim=3)
        return wide[..., ::2].copy_(t)
    return t.contiguous()


def make_tensor(shape, case: Case, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 0.5 + case.mean_offset
    t = _layout(base.to(device=device, dtype=dtype), case.layout)
    return t.requires_grad_(requires_grad)


def make_inputs(case: Case, dtype=torch.float32, device="cpu", requires_grad=False):
    """(content, style) for a case, drawn from a seed derived from the case name."""
    seed = sum(map(ord, case.name))
    content = make_tensor(case.content, case, dtype, device, seed, requires_grad)
    style = make_tensor(case.style_shape, case, dtype, device, seed + 1, requires_grad)
    return content, style


def make_statistics(case: Case, dtype=torch.float32, device="cpu", requires_grad=False, flat=False):
    """Target (mean, std) for adain_affine: std strictly positive."""
    N, C = case.content[:2]
    gen = torch.Generator().manual_seed(7 + sum(map(ord, case.name)))
    shape = (N, C) if flat else (N, C, 1, 1)
    mean = torch.randn(shape, generator=gen, dtype=torch.float64)
    std = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 + 0.2
    return (mean.to(device, dtype).requires_grad_(requires_grad),
            std.to(device, dtype).requires_grad_(requires_grad))


def assert_close(actual, expected, dtype, msg="", case: Case | None = None):
    atol, rtol = TOLERANCES[dtype]
    if case is not None and case.mean_offset:
        # A row mean of size M is stored to M * 2^-24 in fp32: that much error in x - mean is
        # inherent to fp32 statistics (the seed's own code in fp32 has it too).
        atol += abs(case.mean_offset) * torch.finfo(dtype).eps * 4
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=msg)


def assert_grads_close(got, want, dtype, case: Case | None = None, msg: str = ""):
    """Gradients against float64 ones, with TOLERANCES: atol relative to each gradient's magnitude
    (a 16-bit gradient carries the rounding of a 16-bit incoming gradient), plus the large-mean
    slack of assert_close."""
    atol, rtol = TOLERANCES[dtype]
    if case is not None and case.mean_offset:
        atol += abs(case.mean_offset) * torch.finfo(dtype).eps * 4
    for g, w in zip(got, want, strict=True):
        assert g is not None and g.dtype == dtype and g.shape == w.shape
        torch.testing.assert_close(g.double(), w.double().to(g.device), rtol=rtol,
                                   atol=atol * max(1.0, w.abs().max().item()),
                                   msg=(lambda m: f"{msg}: {m}") if msg else None)


def double_leaves(*tensors):
    """float64 copies of tensors as new autograd leaves (for the reference's gradients)."""
    return [t.detach().double().requires_grad_() for t in tensors]


def expected_format(t: torch.Tensor):
    """The memory format the kernels give an output for input t: channels_last kept, anything
    else (contiguous, strided) contiguous."""
    return torch.channels_last if (not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last)) else torch.contiguous_format


def assert_layout_like(out: torch.Tensor, like: torch.Tensor):
    assert out.shape == like.shape and out.dtype == like.dtype and out.device == like.device
    assert out.is_contiguous(memory_format=expected_format(like))


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
