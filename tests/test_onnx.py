"""ONNX export of the `adain` ops (adain_ext/onnx.py), run in onnxruntime against the oracle.

Each model is exported once with dynamic trailing dims and run at two sizes, content and style of
different shapes, so the file cannot hold a size baked in at export time.
"""
from __future__ import annotations

import pytest
import torch

import adain_ext
from adain_ext import reference

pytest.importorskip("onnxscript", reason="ONNX export needs onnx and onnxscript: pip install 'adain_ext[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="these tests run the exports in onnxruntime: pip install 'adain_ext[onnx]'")
if not adain_ext.HAS_CPP:
    pytest.skip("the adain ops are not built (python setup.py build_ext --inplace)", allow_module_level=True)

import adain_ext.onnx  # noqa: E402

# eps large enough to matter (the data's variance is about 4): a translation that dropped it or
# added it to the std instead of the variance would be off by about 1%.
EPS = 0.1

# Largest max|onnxruntime - reference| / max|reference| over every output and case, measured:
# float64 5.5e-16, float32 2.2e-7, float16 5.5e-4 (the output's own rounding: the statistics are
# float32). The budgets leave about 4x; a biased divisor puts mean_std's std of a 21-value row
# 2.4% off, and the fused output (whose two stds err alike) 1.1e-3 off, which fp32 and fp64 reject.
TOLERANCES = {torch.float64: 2e-15, torch.float32: 1e-6, torch.float16: 2e-3}

# Trailing shapes per rank: (content, style) for the export and for a second run.
SHAPES = {
    3: [((20,), (13,)), ((31,), (8,))],
    4: [((5, 4), (7, 3)), ((9, 6), (4, 8))],
    5: [((2, 3, 4), (3, 2, 2)), ((3, 5, 2), (2, 2, 5))],
}
N, C = 2, 3


class AllOps(torch.nn.Module):
    """Every public op: the fused AdaIN, the statistics, the affine with given (N, C) statistics
    and with (N, C, 1, ...) statistics from mean_std; through the function API by default."""

    def __init__(self, alpha: float, unbiased: bool, fused=adain_ext.adain,
                 mean_std=adain_ext.mean_std, affine=adain_ext.adain_affine):
        super().__init__()
        self.alpha, self.unbiased = alpha, unbiased
        self.fused, self.mean_std, self.affine = fused, mean_std, affine

    def forward(self, content, style, mean, std):
        fused = self.fused(content, style, self.alpha, EPS, self.unbiased)
        style_mean, style_std = self.mean_std(style, EPS, self.unbiased)
        affine = self.affine(content, mean, std, EPS, self.unbiased)
        renormalised = self.affine(content, style_mean, style_std, EPS, self.unbiased)
        return fused, style_mean, style_std, affine, renormalised


def expected(content, style, mean, std, alpha, unbiased):
    """The oracle in float64, on any rank: trailing dims flattened into one (the statistics are
    over all of them), results shaped back, statistics (N, C, 1, ...) with the input's rank."""
    def rows(t):
        return t.double().reshape(N, C, -1, 1)

    c, s = rows(content), rows(style)
    style_mean, style_std = reference.mean_std(s, EPS, unbiased)
    target = (mean.double().reshape(N, C, 1, 1), std.double().reshape(N, C, 1, 1))
    stat_shape = (N, C) + (1,) * (style.dim() - 2)
    return (reference.adain(c, s, alpha, EPS, unbiased).reshape(content.shape),
            style_mean.reshape(stat_shape), style_std.reshape(stat_shape),
            reference.adain_affine(c, *target, EPS, unbiased).reshape(content.shape),
            reference.adain(c, s, 1.0, EPS, unbiased).reshape(content.shape))


def make_inputs(content_tail, style_tail, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    content = torch.randn(N, C, *content_tail, generator=gen, dtype=torch.float64) * 2 + 0.5
    style = torch.randn(N, C, *style_tail, generator=gen, dtype=torch.float64) * 3 - 1
    mean = torch.randn(N, C, generator=gen, dtype=torch.float64)
    std = torch.rand(N, C, generator=gen, dtype=torch.float64) * 2 + 0.2
    # Target statistics in float32 whatever x's dtype: they may be of another float dtype.
    return content.to(dtype), style.to(dtype), mean.float(), std.float()


def ops_take_rank(rank: int) -> bool:
    try:
        torch.ops.adain.fused(torch.randn(1, 1, *([3] * (rank - 2))), torch.randn(1, 1, *([3] * (rank - 2))))
    except (RuntimeError, ValueError):  # the checks raise ValueError for a wrong rank
        return False
    return True


def export(model, inputs, rank, translations=None):
    trailing = {i: torch.export.Dim.DYNAMIC for i in range(2, rank)}
    dynamic = {"content": trailing, "style": trailing, "mean": None, "std": None}
    program = adain_ext.onnx.export(model.eval(), inputs, dynamic_shapes=dynamic, verbose=False,
                                    custom_translation_table=translations)
    return ort.InferenceSession(program.model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])


def relative_error(got, want) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


DTYPES = [torch.float32, torch.float16, torch.float64]
OUTPUTS = ("fused", "mean_std mean", "mean_std std", "affine", "affine of mean_std")


def check_exported(model, dtype, alpha, unbiased, rank, translations=None):
    """Exports once at the first shapes of SHAPES[rank], runs at both, compares every output."""
    first, second = SHAPES[rank]
    session = export(model, make_inputs(*first, dtype, seed=0), rank, translations)
    for seed, (content_tail, style_tail) in enumerate((first, second), start=1):
        inputs = make_inputs(content_tail, style_tail, dtype, seed)
        feeds = {name: t.numpy() for name, t in zip(("content", "style", "mean", "std"), inputs)}
        got = session.run(None, feeds)
        want = expected(*inputs, alpha, unbiased)
        for name, g, w in zip(OUTPUTS, got, want, strict=True):
            g = torch.from_numpy(g)
            assert g.dtype == dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.shape)
            error = relative_error(g, w)
            assert error <= TOLERANCES[dtype], (
                f"{name} at content {content_tail}, style {style_tail}: relative error {error:.3g}")


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("unbiased", [True, False], ids=["unbiased", "biased"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_ops_match_reference_in_onnxruntime(dtype, unbiased, alpha):
    check_exported(AllOps(alpha, unbiased), dtype, alpha, unbiased, rank=4)


@pytest.mark.parametrize("rank", [3, 5])
def test_ops_of_other_ranks(rank):
    if not ops_take_rank(rank):
        pytest.skip(f"the adain ops take 4-D input only in this build (rank {rank} asked); "
                    "test_translations_are_rank_generic covers the translations")
    check_exported(AllOps(0.5, True), torch.float32, 0.5, True, rank)


# Stand-ins with the public ops' schemas that take any rank, so that the translations' rank
# genericity is tested whatever ranks the compiled ops accept.
@torch.library.custom_op("adain_onnx_test::fused", mutates_args=())
def any_rank_fused(content: torch.Tensor, style: torch.Tensor, alpha: float, eps: float,
                   unbiased: bool) -> torch.Tensor:
    raise AssertionError("only traced")


@torch.library.custom_op("adain_onnx_test::mean_std", mutates_args=())
def any_rank_mean_std(x: torch.Tensor, eps: float, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    raise AssertionError("only traced")


@torch.library.custom_op("adain_onnx_test::affine", mutates_args=())
def any_rank_affine(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float,
                    unbiased: bool) -> torch.Tensor:
    raise AssertionError("only traced")


any_rank_fused.register_fake(lambda content, style, alpha, eps, unbiased: torch.empty_like(content))
any_rank_affine.register_fake(lambda x, mean, std, eps, unbiased: torch.empty_like(x))


@any_rank_mean_std.register_fake
def _(x, eps, unbiased):
    shape = (*x.shape[:2], *[1] * (x.dim() - 2))
    return x.new_empty(shape), x.new_empty(shape)


@pytest.mark.parametrize("rank", [3, 5])
@pytest.mark.parametrize("unbiased", [True, False], ids=["unbiased", "biased"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=lambda d: str(d).split(".")[-1])
def test_translations_are_rank_generic(dtype, unbiased, rank):
    table = adain_ext.onnx.translation_table()
    stand_ins = {torch.ops.adain_onnx_test.fused.default: table[torch.ops.adain.fused.default],
                 torch.ops.adain_onnx_test.mean_std.default: table[torch.ops.adain.mean_std.default],
                 torch.ops.adain_onnx_test.affine.default: table[torch.ops.adain.affine.default]}
    model = AllOps(0.5, unbiased, any_rank_fused, any_rank_mean_std, any_rank_affine)
    check_exported(model, dtype, 0.5, unbiased, rank, stand_ins)


def test_internal_forwards_translate_with_their_statistics():
    """A program decomposed before export holds adain::_fused_forward, whose statistics outputs
    are (N, C) in float32 for 16-bit input."""
    content, style, _, _ = make_inputs((5, 4), (7, 3), torch.float16, seed=0)

    class Internal(torch.nn.Module):
        def forward(self, content, style):
            return torch.ops.adain._fused_forward(content, style, 0.5, EPS, True)

    session = ort.InferenceSession(
        adain_ext.onnx.export(Internal().eval(), (content, style), verbose=False).model_proto.SerializeToString(),
        providers=["CPUExecutionProvider"])
    got = session.run(None, {"content": content.numpy(), "style": style.numpy()})
    c_mean, c_std = reference.mean_std(content.double(), EPS)
    s_mean, s_std = reference.mean_std(style.double(), EPS)
    want = (reference.adain(content.double(), style.double(), 0.5, EPS), c_mean, c_std, s_mean, s_std)
    shapes = (content.shape,) + ((N, C),) * 4
    dtypes = (torch.float16,) + (torch.float32,) * 4
    for g, w, shape, dtype in zip(got, want, shapes, dtypes, strict=True):
        g = torch.from_numpy(g)
        assert g.dtype == dtype and g.shape == shape
        assert relative_error(g, w.reshape(shape)) <= TOLERANCES[dtype]


def test_export_without_the_table_names_the_missing_op():
    """What a plain torch.onnx.export does: the exporter has no registry to add to, so the table
    (or adain_ext.onnx.export) is needed. If this starts passing, the README's advice can change."""
    inputs = make_inputs((5, 4), (7, 3), torch.float32, seed=0)
    with pytest.raises(torch.onnx.OnnxExporterError, match="No ONNX function found for .*adain"):
        torch.onnx.export(AllOps(1.0, True).eval(), inputs, dynamo=True, verbose=False)


class InternalOps(torch.nn.Module):
    """Both internal forwards with every argument given (alpha, eps, unbiased): a program
    decomposed before export holds them with the public ops' arguments passed through."""

    def __init__(self, alpha: float, unbiased: bool):
        super().__init__()
        self.alpha, self.unbiased = alpha, unbiased

    def forward(self, content, style, mean, std):
        fused = torch.ops.adain._fused_forward(content, style, self.alpha, EPS, self.unbiased)
        affine = torch.ops.adain._affine_forward(content, mean, std, self.alpha, EPS, self.unbiased)
        return (*fused, *affine)


@pytest.mark.parametrize("alpha,unbiased", [(0.3, False), (0.8, True)],
                         ids=["alpha0.3-biased", "alpha0.8-unbiased"])
def test_internal_forwards_translate_with_every_argument(alpha, unbiased):
    """Every output of _fused_forward and _affine_forward ((N, C) statistics in float32) at alpha
    < 1 and either divisor, at the export's shapes and others, against the float64 oracle."""
    first, second = SHAPES[4]
    session = export(InternalOps(alpha, unbiased), make_inputs(*first, torch.float32, seed=0), 4)
    for seed, tails in enumerate((first, second), start=1):
        content, style, mean, std = make_inputs(*tails, torch.float32, seed)
        got = session.run(None, {"content": content.numpy(), "style": style.numpy(),
                                 "mean": mean.numpy(), "std": std.numpy()})
        c64, s64 = content.double(), style.double()
        c_mean, c_std = reference.mean_std(c64, EPS, unbiased)
        s_mean, s_std = reference.mean_std(s64, EPS, unbiased)
        target = (mean.double().reshape(N, C, 1, 1), std.double().reshape(N, C, 1, 1))
        affine = (alpha * reference.adain_affine(c64, *target, EPS, unbiased)
                  + (1 - alpha) * c64)
        want = (reference.adain(c64, s64, alpha, EPS, unbiased), c_mean, c_std, s_mean, s_std,
                affine, c_mean, c_std)
        names = ("fused", "content mean", "content std", "style mean", "style std", "affine",
                 "affine mean_x", "affine std_x")
        for name, g, w in zip(names, got, want, strict=True):
            g = torch.from_numpy(g)
            shape = content.shape if name in ("fused", "affine") else (N, C)
            assert g.dtype == torch.float32 and g.shape == shape, (name, g.dtype, g.shape)
            error = relative_error(g, w.reshape(shape))
            assert error <= TOLERANCES[torch.float32], f"{name} at {tails}: relative error {error:.3g}"


class Activated(torch.nn.Module):
    """adain_affine with its output activation, as accelerate() leaves StarGAN v2's and MUNIT's
    blocks."""

    def __init__(self, activation: str, negative_slope: float):
        super().__init__()
        self.activation, self.negative_slope = activation, negative_slope

    def forward(self, content, style, mean, std):
        return adain_ext.adain_affine(content, mean, std, EPS, False, activation=self.activation,
                                      negative_slope=self.negative_slope)


@pytest.mark.parametrize("activation,slope", [("relu", 0.01), ("leaky_relu", 0.2),
                                              ("leaky_relu", -0.3)])
def test_affine_activation_exports(activation, slope):
    first, second = SHAPES[4]
    session = export(Activated(activation, slope), make_inputs(*first, torch.float32, seed=0), 4)
    for seed, tails in enumerate((first, second), start=1):
        content, style, mean, std = make_inputs(*tails, torch.float32, seed)
        (got,) = session.run(None, {"content": content.numpy(), "style": style.numpy(),
                                    "mean": mean.numpy(), "std": std.numpy()})
        want = reference.adain_affine(content.double(), mean.double(), std.double(), EPS, False,
                                      activation, slope)
        pre = reference.adain_affine(content.double(), mean.double(), std.double(), EPS, False)
        assert (pre < 0).any() and (pre > 0).any()  # both sides of the activation exercised
        assert relative_error(torch.from_numpy(got), want) <= TOLERANCES[torch.float32]


class WithPrologue(torch.nn.Module):
    """StyleGAN's layer: leaky_relu(x + w * noise + b, 0.2), then AdaIN with given statistics."""

    def __init__(self, channels: int, per_element_noise: bool):
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randn(channels, generator=gen))
        self.bias = torch.nn.Parameter(torch.randn(channels, generator=gen))
        self.per_element_noise = per_element_noise

    def forward(self, content, style, mean, std):
        noise = style if self.per_element_noise else style[:, :1]
        return adain_ext.adain_affine(content, mean, std, EPS, False, activation="relu",
                                      noise=noise, noise_weight=self.weight, bias=self.bias,
                                      pre_activation="leaky_relu", pre_negative_slope=0.2)


@pytest.mark.parametrize("per_element_noise", [False, True], ids=["noise_N1", "noise_NC"])
def test_affine_prologue_exports(per_element_noise):
    """The prologue (noise, per-channel weight and bias, LeakyReLU) before the statistics, in
    onnxruntime against the float64 reference; style stands in for the noise (same shape)."""
    first, second = SHAPES[4]
    tails = [(t[0], t[0]) for t in (first, second)]  # noise needs x's spatial dims
    module = WithPrologue(C, per_element_noise)
    session = export(module, make_inputs(*tails[0], torch.float32, seed=0), 4)
    for seed, shapes in enumerate(tails, start=1):
        content, style, mean, std = make_inputs(*shapes, torch.float32, seed)
        (got,) = session.run(None, {"content": content.numpy(), "style": style.numpy(),
                                    "mean": mean.numpy(), "std": std.numpy()})
        noise = style if per_element_noise else style[:, :1]
        want = reference.adain_affine(
            content.double(), mean.double(), std.double(), EPS, False, "relu",
            noise=noise.double(), noise_weight=module.weight.detach().double(),
            bias=module.bias.detach().double(), pre_activation="leaky_relu",
            pre_negative_slope=0.2)
        assert relative_error(torch.from_numpy(got), want) <= TOLERANCES[torch.float32]
