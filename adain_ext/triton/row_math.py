"""The row math of every Triton kernel, written once (the mirror of csrc/row_math.h, same names and
edge rules; docs/design.md "Row math" defines it): a row's std, the alpha blend, the gradient sums
of a row, and the per-row coefficients of the one elementwise map every output is,

    out = g_scale * g + slope * (x - mean) + shift

    forward_coef            (affine / adain forward)   g_scale = 0
    backward_coef           (affine / adain backward)  also grad_mean_t, grad_std_t
    mean_std_backward_coef  (mean_std backward)        g_scale = 0

and the affine op's output activation (its "epilogue"): `activate` on the map's result y, and
`activation_grad` on g in the backward, which recomputes y from forward_coef.

Triton has no structs: a RowCoef{g_scale, slope, mean, shift} and a GradSums{sum_g, sum_g_dev}
travel as tuples of per-row [BLOCK_R] vectors in that order. Every value is in the accumulation
dtype of its `like`/inputs.
"""
import triton
import triton.language as tl


@triton.jit
def row_length(L, like):
    """L in the statistics dtype (that of `like`, a per-row vector). Written `L * 1.0` it would be
    fp32 (a Python float literal is fp32 in Triton): fp64 rows longer than 2**24 would get a
    rounded length."""
    return tl.zeros_like(like) + L


@triton.jit
def variance_divisor(L, like, UNBIASED: tl.constexpr):
    """D = L - 1 (unbiased, the reference's calc_mean_std) or L, in the statistics dtype."""
    divisor = row_length(L, like)
    if UNBIASED:
        divisor = divisor - 1.0
    return divisor


@triton.jit
def std_of(m2, L, eps, UNBIASED: tl.constexpr):
    """std = sqrt(m2 / D + eps): eps goes on the variance, as in the reference. eps = 0 and a
    constant row give std = 0, and what divides by it is left to IEEE arithmetic."""
    return tl.sqrt(m2 / variance_divisor(L, m2, UNBIASED) + eps)


@triton.jit
def blend(alpha, target, own):
    """alpha * target + (1 - alpha) * own, and target itself at alpha == 1 (the rule of every
    backend): an Inf or NaN statistic of x's own must not reach the result through 0 * Inf."""
    return tl.where(alpha == 1.0, target, alpha * target + (1.0 - alpha) * own)


@triton.jit
def grad_sums_tile(g, x, mean_x, mask):
    """GradSums of a [BLOCK_R, BLOCK_L] tile per row: sum_g = sum(g), sum_g_dev =
    sum(g * (x - mean_x)), masked entries ignored. Centred before the product: sum(g * x) -
    mean_x * sum(g) cancels on large-mean rows. g must be loaded with 0 where masked."""
    # Masked after the product: a NaN mean_x must not reach masked entries (0 * NaN).
    return tl.sum(g, axis=1), tl.sum(tl.where(mask, g * (x - mean_x[:, None]), 0.0), axis=1)


@triton.jit
def forward_coef(mean_x, std_x, mean_t, std_t, alpha):
    """(slope, mean, shift) of the affine / adain forward: target_std / std_x, mean_x,
    target_mean, the target statistics blended with x's own by alpha. Exact for any alpha,
    since x = std_x * x_hat + mean_x."""
    target_mean = blend(alpha, mean_t, mean_x)
    target_std = blend(alpha, std_t, std_x)
    return target_std / std_x, mean_x, target_mean


@triton.jit
def backward_coef(sum_g, sum_g_dev, mean_x, std_x, std_t, alpha, L, UNBIASED: tl.constexpr):
    """(g_scale, slope, mean, shift, grad_mean_t, grad_std_t) of the affine / adain backward:

        grad_x = g_scale * g + c * (sum_g_xhat / D * x_hat + sum_g / L)
        x_hat = (x - mean_x) * rstd,  g_scale = target_std * rstd,  c = (1 - alpha) - g_scale

    where sum_g_xhat = sum(g * x_hat); the c terms are the gradient through x's own statistics
    inside target_mean and target_std. grad_mean_t = alpha * sum_g, grad_std_t = alpha *
    sum_g_xhat are the gradients of the target statistics."""
    sum_g_xhat = sum_g_dev / std_x
    rstd = 1.0 / std_x
    g_scale = blend(alpha, std_t, std_x) * rstd
    own_stats_scale = (1.0 - alpha) - g_scale
    slope = own_stats_scale * sum_g_xhat / variance_divisor(L, std_x, UNBIASED) * rstd
    shift = own_stats_scale * sum_g / row_length(L, std_x)
    return g_scale, slope, mean_x, shift, alpha * sum_g, alpha * sum_g_xhat


@triton.jit
def mean_std_backward_coef(grad_mean, grad_std, mean, std, L, UNBIASED: tl.constexpr):
    """(slope, mean, shift) of the mean_std backward: grad_x = grad_std * (x - mean) / (D * std)
    + grad_mean / L."""
    slope = grad_std / (variance_divisor(L, std, UNBIASED) * std)
    return slope, mean, grad_mean / row_length(L, std)


# The activation codes, csrc/row_math.h's enum Activation: the affine kernels' ACTIVATION
# constexpr, so "none" compiles to no activation code at all. tl.constexpr: the only globals a
# @triton.jit function may read.
ACTIVATION_NONE = tl.constexpr(0)
ACTIVATION_RELU = tl.constexpr(1)
ACTIVATION_LEAKY_RELU = tl.constexpr(2)
_ACTIVATION_CODES = {"none": ACTIVATION_NONE, "relu": ACTIVATION_RELU,
                     "leaky_relu": ACTIVATION_LEAKY_RELU}


def activation_code(activation: str) -> int:
    """The ACTIVATION constexpr of an activation name ('none', 'relu', 'leaky_relu')."""
    return _ACTIVATION_CODES[activation].value


@triton.jit
def activate(y, negative_slope, ACTIVATION: tl.constexpr):
    """The output activation of a [BLOCK_R, BLOCK_L] tile of the map's results y (negative_slope a
    per-row vector, leaky_relu's): relu gives 0 and leaky_relu negative_slope * y where y <= 0.
    A NaN y fails that test and passes through (F.relu gives NaN); relu(-Inf) is 0, not 0 * -Inf."""
    if ACTIVATION == ACTIVATION_RELU:
        y = tl.where(y <= 0.0, 0.0, y)
    elif ACTIVATION == ACTIVATION_LEAKY_RELU:
        y = tl.where(y <= 0.0, negative_slope[:, None] * y, y)
    return y


@triton.jit
def activation_grad(y, g, negative_slope, ACTIVATION: tl.constexpr):
    """d activate(y) / dy times g, the same `y <= 0` test (PyTorch's threshold_backward and
    leaky_relu_backward): the g every sum and map of the backward then uses."""
    if ACTIVATION == ACTIVATION_RELU:
        g = tl.where(y <= 0.0, 0.0, g)
    elif ACTIVATION == ACTIVATION_LEAKY_RELU:
        g = tl.where(y <= 0.0, negative_slope[:, None] * g, g)
    return g


@triton.jit
def apply_coef(g, x, g_scale, slope, mean, shift, HAS_G: tl.constexpr):
    """The map g_scale * g + slope * (x - mean) + shift over a [BLOCK_R, BLOCK_L] tile, per-row
    coefficients. x - mean before scaling: slope * x + (shift - slope * mean) cancels two terms of
    size |slope * mean| on large-mean rows (x = 1e4 + N(0, 1) loses ~1e-3 absolute in fp32).
    Without HAS_G (g_scale = 0) g and g_scale are not read."""
    out = slope[:, None] * (x - mean[:, None])
    if HAS_G:
        out = g_scale[:, None] * g + out
    return out + shift[:, None]
