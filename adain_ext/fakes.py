"""The fake kernels of every op schema, written once for both namespaces that have kernels:
adain:: (the C++/CUDA ops, registered by adain_ext/cpp_ops.py) and adain_triton:: (the Triton ops,
registered beside their launchers in adain_ext/triton/). The schemas are declared in
csrc/adain.cpp; the Triton ops mirror them.

A fake kernel gives the results' shapes, dtypes and layouts without computing them (torch.compile,
torch.export and opcheck trace through it), and runs the same input checks as the kernels, so a bad
call fails the same way while tracing. Outputs keep x's layout; the internal ops' statistics are
(N, C) in the accumulation dtype (adain_ext/_layout.py).
"""
from __future__ import annotations

from adain_ext._layout import empty_output, empty_stats, stat_shape_of
from adain_ext._validation import (check_activation, check_affine, check_alpha,
                                   check_backward_mean, check_eps, check_features, check_pair,
                                   check_prologue)


def mean_std(x, eps=1e-5, unbiased=True):
    check_features(x, "x", unbiased)
    check_eps(eps)
    return x.new_empty(stat_shape_of(x)), x.new_empty(stat_shape_of(x))


def mean_std_backward(grad_mean, grad_std, x, mean, std, unbiased):
    return empty_output(x)


def affine_forward(x, mean, std, alpha, eps, unbiased, activation="none", negative_slope=0.01):
    check_affine(x, mean, std, unbiased)
    check_eps(eps)
    check_alpha(alpha)
    check_activation(activation, negative_slope)
    return empty_output(x), empty_stats(x), empty_stats(x)


def affine_backward(grad_out, x, mean_x, std_x, std, alpha, unbiased, mean=None,
                    activation="none", negative_slope=0.01):
    check_activation(activation, negative_slope)
    check_backward_mean(mean, activation)
    return empty_output(x), empty_stats(x), empty_stats(x)


def prologue_affine_forward(x, noise, noise_weight, bias, pre_activation, pre_negative_slope,
                            mean, std, eps, unbiased, activation, negative_slope):
    check_affine(x, mean, std, unbiased)
    check_prologue(x, noise, noise_weight, bias, pre_activation, pre_negative_slope)
    check_eps(eps)
    check_activation(activation, negative_slope)
    return empty_output(x), empty_stats(x), empty_stats(x)


def prologue_affine_backward(grad_out, x, noise, noise_weight, bias, pre_activation,
                             pre_negative_slope, mean_p, std_p, mean, std, unbiased, activation,
                             negative_slope):
    check_prologue(x, noise, noise_weight, bias, pre_activation, pre_negative_slope)
    check_activation(activation, negative_slope)
    return empty_output(x), *[empty_stats(x) for _ in range(4)]


def fused_forward(content, style, alpha, eps, unbiased):
    check_pair(content, style, unbiased)
    check_eps(eps)
    check_alpha(alpha)
    return (empty_output(content), *[empty_stats(content) for _ in range(4)])


def fused_backward(grad_out, content, style, content_mean, content_std, style_mean, style_std,
                   alpha, unbiased):
    return empty_output(content), empty_output(style)


# op name (as in the schemas) -> its fake kernel
BY_OP = {
    "mean_std": mean_std,
    "_mean_std_backward": mean_std_backward,
    "_affine_forward": affine_forward,
    "_affine_backward": affine_backward,
    "_prologue_affine_forward": prologue_affine_forward,
    "_prologue_affine_backward": prologue_affine_backward,
    "_fused_forward": fused_forward,
    "_fused_backward": fused_backward,
}

# op name -> the positions of its per-channel arguments (noise_weight, bias), which vmap must not
# fold into N (adain_ext/_vmap.py)
PER_CHANNEL_ARGS = {
    "affine": (8, 9),
    "_prologue_affine_forward": (2, 3),
    "_prologue_affine_backward": (3, 4),
}
