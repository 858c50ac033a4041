"""The function API: one entry point per op, each with a `backend=` keyword.

backend="auto"      the compiled kernels when they serve the tensor's device, else the reference
backend="cpp"       the compiled C++/CUDA kernels (torch.ops.adain.*); an error if not built
backend="triton"    the Triton kernels (adain_ext.triton)
backend="reference" the pure-PyTorch oracle in adain_ext.reference (always available)
The backends, what they serve and why one is unavailable are one table: adain_ext/backends.py.

Every op takes (N, C, *) tensors of rank >= 3, with statistics per (n, c) over all trailing dims
(as F.instance_norm): (N, C, T) sequences, (N, C, H, W) images, (N, C, D, H, W) volumes.
"""
from __future__ import annotations

import torch

from adain_ext import _validation, backends

BACKENDS = ("auto", *backends.NAMES)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that `backend` means for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"adain: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return backends.auto_backend(device.type)
    why = backends.REGISTRY[backend].why_unavailable(device.type)
    if why is not None:
        raise RuntimeError(
            f"adain: backend={backend!r} is unavailable for {device.type} tensors: {why}")
    return backend


# (backend, device) -> the ops that serve it, filled on first use: what serves a device is fixed
# for the life of the process (the extension loaded or not, Triton found or not), and a call of a
# small layer must cost little more than the op itself (benchmarks/bench_host_cost.py).
_SERVED: dict[tuple[str, torch.device], object] = {}


def _serve(backend: str, device: torch.device):
    ops = _SERVED[backend, device] = backends.ops(resolve_backend(backend, device))
    return ops


# Under torch.compile, a CPU training graph (autograd recording, an input requiring grad) traces
# backend="auto" as an ATen composite of the reference's math (backends.CompiledTrainingComposite,
# written the way Inductor compiles best), so Inductor fuses the normalisation with its
# neighbours as it does for the model's own code. Beside an opaque op, Inductor's CPU code saves
# the neighbouring activation's bool mask through a scalar loop (torch 2.14/2.15): a StyleGAN
# block's compiled training step took 4x the compiled original's (benchmarks/bench_blocks.py).
# False keeps the compiled kernels in such graphs too. Eager calls, inference graphs, explicit
# backends and GPU tensors are not affected, nor adain_affine with an activation: there the
# activation is the kernel's epilogue and saves no mask (accelerate() folds the one after
# StarGAN v2's and MUNIT's AdaIN), so the kernels beat Inductor's code. With a prologue (noise,
# bias, pre-activation: the neighbours before the op already in it) the kernel runs for tensors
# of at least PROLOGUE_KERNEL_BYTES, and smaller ones trace the composite, prologue and all:
# inside the StyleGAN block (8x512x32x32, 16 MiB) the kernel's training step took 11-13 ms
# against the composite's 15-31 ms and the compiled original's 18-34 ms, while in the example
# generator (tensors up to 1 MiB, where Inductor moves its conv outputs to channels_last and
# back around an opaque op) the kernel's step was 3-4% slower than the composite's
# (benchmarks/bench_blocks.py, docs/benchmarks.md).
COMPOSITE_IN_COMPILED_CPU_TRAINING = True
PROLOGUE_KERNEL_BYTES = 4 << 20


def _compiled_cpu_training(*tensors: torch.Tensor) -> bool:
    return (COMPOSITE_IN_COMPILED_CPU_TRAINING and torch.compiler.is_compiling()
            and torch.is_grad_enabled() and tensors[0].device.type == "cpu"
            and any(t.requires_grad for t in tensors))


def _ops(backend: str, *tensors: torch.Tensor, composite_in_compiled_training: bool = True):
    if (backend == "auto" and composite_in_compiled_training
            and _compiled_cpu_training(*tensors)):
        return backends.CompiledTrainingComposite
    device = tensors[0].device
    return _SERVED.get((backend, device)) or _serve(backend, device)


def mean_std(x: torch.Tensor, eps: float = 1e-5, unbiased: bool = True, *, backend: str = "auto"):
    """Per-(n, c) mean and std = sqrt(var + eps) over the trailing dims of a (N, C, *) tensor,
    each (N, C, 1, ...) with x's rank ((N, C, 1, 1) for images) in x's dtype.

    With the defaults this is the reference `calc_mean_std` (unbiased variance, eps on the
    variance).
    """
    return _ops(backend, x).mean_std(x, eps, unbiased)


def adain(content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0, eps: float = 1e-5,
          unbiased: bool = True, *, backend: str = "auto") -> torch.Tensor:
    """alpha * AdaIN(content, style) + (1 - alpha) * content; style may have other trailing dims
    (another H and W, another length, even another rank) but the same N and C."""
    if isinstance(alpha, torch.Tensor):  # its gradient would be dropped silently: refused
        _validation.check_scalars(alpha, eps)
        alpha = float(alpha)
    return _ops(backend, content, style).adain(content, style, alpha, eps, unbiased)


def adain_affine(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-5,
                 unbiased: bool = True, *, activation: str | None = None,
                 negative_slope: float = 0.01, noise: torch.Tensor | None = None,
                 noise_weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 pre_activation: str | None = None, pre_negative_slope: float = 0.01,
                 backend: str = "auto") -> torch.Tensor:
    """std * (p - mean_p) / std_p + mean with given per-(n, c) statistics, (N, C) or (N, C, 1, ...).

    This is StyleGAN's AdaIN, and the way to reuse cached style statistics or mix several styles.
    activation="relu" or "leaky_relu" (with negative_slope) is applied to the output in the same
    kernel, forward and backward: StarGAN v2's AdaIN + LeakyReLU(0.2), MUNIT's AdaIN + ReLU.

    The prologue, also in the same kernel: p = pre_activation(x + noise_weight * noise + bias)
    (p = x without these arguments), StyleGAN's noise injection and LeakyReLU(0.2) before its
    AdaIN. noise is (N, 1, *) or (N, C, *) in x's dtype; noise_weight one value per channel ((C,)
    or (1, C, 1, ...)) or a single one (no noise_weight: 1); bias one per channel. Gradients reach
    every input; none of pre or p is stored.
    """
    if activation is None:
        activation = "none"
    if pre_activation is None:
        pre_activation = "none"
    if (noise is not None or noise_weight is not None or bias is not None
            or pre_activation != "none"):
        # Compiled CPU training: the kernel with an epilogue or for large tensors, else the
        # composite (see COMPOSITE_IN_COMPILED_CPU_TRAINING).
        composite = activation == "none" and x.numel() * x.element_size() < PROLOGUE_KERNEL_BYTES
        ops = _ops(backend, x, mean, std, composite_in_compiled_training=composite)
        return ops.adain_affine(x, mean, std, eps, unbiased, activation, negative_slope,
                                noise=noise, noise_weight=noise_weight, bias=bias,
                                pre_activation=pre_activation,
                                pre_negative_slope=pre_negative_slope)
    if activation == "none":  # the schema's defaults: a cheaper call
        return _ops(backend, x, mean, std).adain_affine(x, mean, std, eps, unbiased)
    ops = _ops(backend, x, mean, std, composite_in_compiled_training=False)
    return ops.adain_affine(x, mean, std, eps, unbiased, activation, negative_slope)
