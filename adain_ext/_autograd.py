"""The autograd formulas of the Triton ops (adain_ext/triton/), the Python mirror of
csrc/autograd.cpp (the compiled ops' autograd, in C++ so that no call enters Python). Each factory
takes the backend's backward ops and returns (backward, setup_context) for
torch.library.register_autograd.

A backward run with create_graph=True (double backward: gradient penalties, Hessian-vector
products) differentiates the reference (adain_ext/reference.py) recomputed from the saved inputs
instead of calling the backward kernels, whose results carry no graph: every higher derivative is
exact. Forward-mode AD and functorch's differentiating transforms cannot use a custom op's autograd
registration; the Triton backend's functions route them to the reference
(adain_ext/triton/__init__.py).
"""
from __future__ import annotations

import torch

from adain_ext import reference
from adain_ext._layout import as_grad_of


def _attached(t: torch.Tensor) -> torch.Tensor:
    """A saved input as the composite's input: attached where it requires grad, else a constant
    (so a gradient taken with respect to one input still depends on the others)."""
    return t if t.requires_grad else t.detach()


def composite_gradients(composite, inputs, needs, grad_outputs):
    """The gradients of composite(*inputs) with respect to the inputs that need one, as a
    differentiable graph (the backward of create_graph=True)."""
    inputs = [_attached(t) for t in inputs]
    with torch.enable_grad():
        outputs = composite(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    used = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
    wanted = [t for t, need in zip(inputs, needs) if need]
    if not used or not wanted:
        return [None] * len(inputs)
    grads = iter(torch.autograd.grad([o for o, _ in used], wanted, [g for _, g in used],
                                     create_graph=True, allow_unused=True))
    return [next(grads) if need else None for need in needs]


def _blended(out, x, alpha):
    """alpha * out + (1 - alpha) * x, the alpha blend of the internal ops (alpha == 1: out)."""
    return out if alpha == 1.0 else alpha * out + (1.0 - alpha) * x


def mean_std(mean_std_backward):
    """mean_std(x, eps, unbiased) -> (mean, std)."""

    def setup_context(ctx, inputs, output):
        x, eps, unbiased = inputs
        mean, std = output
        ctx.save_for_backward(x, mean, std)
        ctx.eps, ctx.unbiased = eps, unbiased

    def backward(ctx, grad_mean, grad_std):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        x, mean, std = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            (grad_x,) = composite_gradients(
                lambda x: reference.mean_std(x, ctx.eps, ctx.unbiased), [x], [True],
                [grad_mean, grad_std])
            return grad_x, None, None
        # Either output may be unused; its gradient then arrives as None.
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_std = torch.zeros_like(std) if grad_std is None else grad_std
        return mean_std_backward(grad_mean, grad_std, x, mean, std, ctx.unbiased), None, None

    return backward, setup_context


def affine_forward(affine_backward):
    """_affine_forward(x, mean, std, alpha, eps, unbiased, activation, negative_slope)
    -> (out, mean_x, std_x). With an activation the backward op gets the target mean too: it
    recomputes the output before the activation from x and the forward's coefficients."""

    def setup_context(ctx, inputs, output):
        x, mean, std, alpha, eps, unbiased, activation, negative_slope = inputs
        _out, mean_x, std_x = output
        ctx.mark_non_differentiable(mean_x, std_x)
        ctx.save_for_backward(x, mean_x, std_x, mean, std)
        ctx.alpha, ctx.eps, ctx.unbiased = alpha, eps, unbiased
        ctx.activation, ctx.negative_slope = activation, negative_slope
        ctx.mean_like = (mean.shape, mean.dtype)
        ctx.std_like = (std.shape, std.dtype)

    def backward(ctx, grad_out, _grad_mean_x, _grad_std_x):
        x, mean_x, std_x, mean, std = ctx.saved_tensors
        need_x, need_mean, need_std = ctx.needs_input_grad[:3]
        no_grads_of_scalars = (None,) * 5  # alpha, eps, unbiased, activation, negative_slope
        if grad_out is None:
            return (None, None, None, *no_grads_of_scalars)
        if torch.is_grad_enabled():  # create_graph=True

            def composite(x, mean, std):
                # The activation after the alpha blend, as the kernels apply it to the blended
                # map (at alpha == 1, reference.adain_affine with the activation exactly).
                out = _blended(reference.adain_affine(x, mean, std, ctx.eps, ctx.unbiased), x,
                               ctx.alpha)
                return reference.activate(out, ctx.activation, ctx.negative_slope)

            grads = composite_gradients(composite, [x, mean, std], [need_x, need_mean, need_std],
                                        [grad_out])
            return (*grads, *no_grads_of_scalars)
        grad_x, grad_mean, grad_std = affine_backward(grad_out, x, mean_x, std_x, std, ctx.alpha,
                                                      ctx.unbiased, mean, ctx.activation,
                                                      ctx.negative_slope)
        return (
            grad_x if need_x else None,
            as_grad_of(grad_mean, *ctx.mean_like) if need_mean else None,
            as_grad_of(grad_std, *ctx.std_like) if need_std else None,
            *no_grads_of_scalars,
        )

    return backward, setup_context


def fused_forward(affine_backward, mean_std_backward):
    """_fused_forward(content, style, alpha, eps, unbiased) -> (out, 4 statistics).

    The backward is affine_backward (content gradient and the style statistics' gradients) then
    mean_std_backward (the style gradient from those): the composition csrc/adain.cpp's
    fused_backward makes for the compiled ops on devices without a one-pass kernel.
    """

    def setup_context(ctx, inputs, output):
        content, style, alpha, eps, unbiased = inputs
        _out, content_mean, content_std, style_mean, style_std = output
        ctx.mark_non_differentiable(content_mean, content_std, style_mean, style_std)
        ctx.save_for_backward(content, style, content_mean, content_std, style_mean, style_std)
        ctx.alpha, ctx.eps, ctx.unbiased = alpha, eps, unbiased

    def backward(ctx, grad_out, *_grad_stats):
        content, style, content_mean, content_std, style_mean, style_std = ctx.saved_tensors
        need_content, need_style = ctx.needs_input_grad[:2]
        if grad_out is None:
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True
            grads = composite_gradients(
                lambda c, s: reference.adain(c, s, ctx.alpha, ctx.eps, ctx.unbiased),
                [content, style], [need_content, need_style], [grad_out])
            return (*grads, None, None, None)
        grad_content, grad_mean, grad_std = affine_backward(
            grad_out, content, content_mean, content_std, style_std, ctx.alpha, ctx.unbiased)
        grad_style = None
        if need_style:
            grad_style = mean_std_backward(grad_mean, grad_std, style, style_mean, style_std,
                                           ctx.unbiased)
        return grad_content if need_content else None, grad_style, None, None, None

    return backward, setup_context


def _channel_weight(noise_weight, like: torch.Tensor) -> torch.Tensor | float:
    """noise_weight shaped (1, C, 1, ...) to broadcast against `like` (a single value: (1, 1, ...)),
    in like's dtype; 1 without one."""
    if noise_weight is None:
        return 1.0
    return noise_weight.reshape(1, -1, *([1] * (like.dim() - 2))).to(like.dtype)


def prologue_affine_forward(prologue_affine_backward):
    """_prologue_affine_forward(x, noise, noise_weight, bias, pre_activation, pre_negative_slope,
    mean, std, eps, unbiased, activation, negative_slope) -> (out, mean_p, std_p): affine at
    alpha = 1 over p = pre_activation(x + noise_weight * noise + bias).

    The backward op gives grad_x and the per-(n, c) rows of the bias and noise_weight gradients;
    here they are summed over N (and over C for a single noise_weight), and grad_noise =
    noise_weight * grad_x (summed over C for (N, 1, *) noise), in the accumulation dtype."""

    def setup_context(ctx, inputs, output):
        (x, noise, noise_weight, bias, pre_activation, pre_negative_slope, mean, std, eps,
         unbiased, activation, negative_slope) = inputs
        _out, mean_p, std_p = output
        ctx.mark_non_differentiable(mean_p, std_p)
        ctx.save_for_backward(x, noise, noise_weight, bias, mean_p, std_p, mean, std)
        ctx.pre_activation, ctx.pre_negative_slope = pre_activation, pre_negative_slope
        ctx.eps, ctx.unbiased = eps, unbiased
        ctx.activation, ctx.negative_slope = activation, negative_slope
        ctx.mean_like = (mean.shape, mean.dtype)
        ctx.std_like = (std.shape, std.dtype)

    def backward(ctx, grad_out, _grad_mean_p, _grad_std_p):
        x, noise, noise_weight, bias, mean_p, std_p, mean, std = ctx.saved_tensors
        needs = ctx.needs_input_grad
        need_x, need_noise, need_weight, need_bias, need_mean, need_std = (
            needs[0], needs[1], needs[2], needs[3], needs[6], needs[7])
        scalars = (None, None)  # pre_activation, pre_negative_slope
        tail = (None,) * 4  # eps, unbiased, activation, negative_slope
        if grad_out is None:
            return (None,) * 12
        if torch.is_grad_enabled():  # create_graph=True
            given = [(t, need) for t, need in ((x, need_x), (noise, need_noise),
                                               (noise_weight, need_weight), (bias, need_bias),
                                               (mean, need_mean), (std, need_std))]
            present = [i for i, (t, _) in enumerate(given) if t is not None]

            def composite(*tensors):
                full = [None] * len(given)
                for i, t in zip(present, tensors):
                    full[i] = t
                x, noise, noise_weight, bias, mean, std = full
                return reference.adain_affine(
                    x, mean, std, ctx.eps, ctx.unbiased, ctx.activation, ctx.negative_slope,
                    noise=noise, noise_weight=noise_weight, bias=bias,
                    pre_activation=ctx.pre_activation, pre_negative_slope=ctx.pre_negative_slope)

            grads = composite_gradients(composite, [given[i][0] for i in present],
                                        [given[i][1] for i in present], [grad_out])
            full = [None] * len(given)
            for i, g in zip(present, grads):
                full[i] = g
            gx, gn, gw, gb, gm, gs = full
            return (gx, gn, gw, gb, *scalars, gm, gs, *tail)
        grad_x, grad_mean, grad_std, bias_rows, weight_rows = prologue_affine_backward(
            grad_out, x, noise, noise_weight, bias, ctx.pre_activation, ctx.pre_negative_slope,
            mean_p, std_p, mean, std, ctx.unbiased, ctx.activation, ctx.negative_slope)
        grad_noise = grad_weight = grad_bias = None
        if need_noise:
            acc = bias_rows.dtype
            grad_noise = _channel_weight(noise_weight, grad_x.to(acc)) * grad_x.to(acc)
            if noise.shape[1] == 1:
                grad_noise = grad_noise.sum(1, keepdim=True)
            grad_noise = grad_noise.to(noise.dtype)
        if need_weight:
            grad_weight = weight_rows.sum(0)
            if noise_weight.numel() == 1:
                grad_weight = grad_weight.sum()
            grad_weight = grad_weight.reshape(noise_weight.shape).to(noise_weight.dtype)
        if need_bias:
            grad_bias = bias_rows.sum(0).reshape(bias.shape).to(bias.dtype)
        return (
            grad_x if need_x else None,
            grad_noise,
            grad_weight,
            grad_bias,
            *scalars,
            as_grad_of(grad_mean, *ctx.mean_like) if need_mean else None,
            as_grad_of(grad_std, *ctx.std_like) if need_std else None,
            *tail,
        )

    return backward, setup_context
