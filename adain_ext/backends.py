"""The backend registry: every backend of the function API, in one table.

A backend is a name, the device types it has kernels for, a check that says why it cannot serve a
device type here (None when it can), and its three ops, loaded on first use. Everything else is
derived from `REGISTRY`: adain_ext.BACKENDS and resolve_backend (adain_ext.functional), the
`--backend` choices of the style-transfer commands, and the backends tests/test_backends.py runs.

Every backend's ops take the same arguments as torch.ops.adain.*, positionally:
    mean_std(x, eps, unbiased) -> (mean, std)
    adain(content, style, alpha, eps, unbiased) -> out
    adain_affine(x, mean, std, eps, unbiased, activation, negative_slope, *, noise,
                 noise_weight, bias, pre_activation, pre_negative_slope) -> out
and give the same results and errors as adain_ext/reference.py (tests/test_backends.py and
tests/test_errors.py check).

Adding a backend: a module with those three functions, and one `Backend(...)` entry below.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adain_ext import _extension, _validation, reference


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # device types it has kernels for; tests prefer the first one present
    why_unavailable: Callable[[str], str | None]  # device type -> the reason it cannot run there
    load_ops: Callable[[], object]  # -> an object with mean_std, adain, adain_affine
    auto: bool  # whether backend="auto" may pick it (in table order, the first available wins)
    summary: str
    # The torch.ops namespace its ops are registered in (the same schemas as adain::), so that
    # torch.library.opcheck can test them (tests/test_op_contract.py); None: it registers none.
    op_namespace: str | None = None


# ---- The compiled C++/CUDA kernels (torch.ops.adain.*, built by setup.py).


def _cpp_why_unavailable(device_type: str) -> str | None:
    if not _extension.HAS_CPP:
        return f"it failed to load: {_extension.IMPORT_ERROR}"
    if not _extension.has_kernel(device_type):
        return f"it was built without {device_type} kernels"
    return None


class _CppOps:
    """torch.ops.adain under the function API's names: the overloads themselves (their argument
    order is the function API's), so no Python frame stands between a call and the dispatcher.
    A plain class, which torch.compile traces through on a first call inside a compiled
    function. The C++ ops check their own input."""

    if _extension.HAS_CPP:  # the ops exist once adain_ext._C loaded
        mean_std = torch.ops.adain.mean_std.default
        adain = torch.ops.adain.fused.default
        adain_affine = torch.ops.adain.affine.default


# ---- The Triton kernels (adain_ext/triton): on CUDA, or on CPU through the Triton interpreter.

# Looked up once, without importing triton (heavy): torch.compile traces the check as a constant.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def _triton_why_unavailable(device_type: str) -> str | None:
    if not _TRITON_FOUND:
        return "Triton is not installed (pip install triton)"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ("the Triton kernels need a CUDA device here "
                "(or TRITON_INTERPRET=1 to run them on CPU, slowly)")
    return None


def _triton_ops():
    from adain_ext import triton as triton_backend  # imported on first use: triton is heavy

    return triton_backend


# ---- The pure-PyTorch reference (adain_ext/reference.py), checked like the compiled ops.


class _ReferenceOps:
    """adain_ext.reference behind the input checks the compiled ops make (same messages)."""

    @staticmethod
    def mean_std(x, eps, unbiased):
        _validation.check_features(x, "x", unbiased)
        _validation.check_eps(eps)
        return reference.mean_std(x, eps, unbiased)

    @staticmethod
    def adain(content, style, alpha, eps, unbiased):
        _validation.check_pair(content, style, unbiased)
        _validation.check_eps(eps)
        _validation.check_alpha(alpha)
        return reference.adain(content, style, alpha, eps, unbiased)

    @staticmethod
    def adain_affine(x, mean, std, eps, unbiased, activation="none", negative_slope=0.01, *,
                     noise=None, noise_weight=None, bias=None, pre_activation="none",
                     pre_negative_slope=0.01):
        _validation.check_affine(x, mean, std, unbiased)
        _validation.check_prologue(x, noise, noise_weight, bias, pre_activation,
                                   pre_negative_slope)
        _validation.check_eps(eps)
        _validation.check_activation(activation, negative_slope)
        return reference.adain_affine(x, mean, std, eps, unbiased, activation, negative_slope,
                                      noise=noise, noise_weight=noise_weight, bias=bias,
                                      pre_activation=pre_activation,
                                      pre_negative_slope=pre_negative_slope)


class CompiledTrainingComposite:
    """The reference's math written for Inductor: what backend="auto" traces inside a compiled CPU
    training graph (adain_ext.functional). One fused var_mean reduction and x_hat = (x - mean) *
    rsqrt(var + eps) instead of the oracle's var, mean, sqrt and division: the same values up to
    rounding, and measured 14-18% faster in Inductor's code (benchmarks/bench_blocks.py's op and
    StyleGAN rows, pinned-heap runs), as fast as the compiled F.instance_norm models write. The
    same checks as the reference backend."""

    @staticmethod
    def _stats(x, eps, unbiased):
        var, mean = torch.var_mean(x.flatten(2), dim=2, correction=1 if unbiased else 0)
        shape = reference._stat_shape(x)
        return mean.view(shape), (var + eps).view(shape)

    @staticmethod
    def mean_std(x, eps, unbiased):
        _validation.check_features(x, "x", unbiased)
        _validation.check_eps(eps)
        mean, var_eps = CompiledTrainingComposite._stats(x, eps, unbiased)
        return mean, var_eps.sqrt()

    @staticmethod
    def _affine(x, mean, std, eps, unbiased, activation="none", negative_slope=0.01):
        mean_x, var_eps = CompiledTrainingComposite._stats(x, eps, unbiased)
        shape = reference._stat_shape(x)
        out = (x - mean_x) * torch.rsqrt(var_eps) * std.reshape(shape) + mean.reshape(shape)
        return reference.activate(out.to(x.dtype), activation, negative_slope)

    @staticmethod
    def adain_affine(x, mean, std, eps, unbiased, activation="none", negative_slope=0.01, *,
                     noise=None, noise_weight=None, bias=None, pre_activation="none",
                     pre_negative_slope=0.01):
        _validation.check_affine(x, mean, std, unbiased)
        _validation.check_prologue(x, noise, noise_weight, bias, pre_activation,
                                   pre_negative_slope)
        _validation.check_eps(eps)
        _validation.check_activation(activation, negative_slope)
        p = x
        if _validation.has_prologue(noise, noise_weight, bias, pre_activation):
            p = reference.prologue(x, noise, noise_weight, bias, pre_activation,
                                   pre_negative_slope)
        return CompiledTrainingComposite._affine(p, mean, std, eps, unbiased, activation,
                                                 negative_slope).to(x.dtype)

    @staticmethod
    def adain(content, style, alpha, eps, unbiased):
        _validation.check_pair(content, style, unbiased)
        _validation.check_eps(eps)
        _validation.check_alpha(alpha)
        style_mean, var_eps = CompiledTrainingComposite._stats(style, eps, unbiased)
        out = CompiledTrainingComposite._affine(content, style_mean, var_eps.sqrt(), eps,
                                                unbiased)
        return out if alpha == 1.0 else alpha * out + (1.0 - alpha) * content


def _always_available(device_type: str) -> str | None:
    return None


# ---- The table. Its order is the order of adain_ext.BACKENDS and of backend="auto"'s preference.

REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("cpp", ("cpu", "cuda"), _cpp_why_unavailable, lambda: _CppOps, auto=True,
            summary="the compiled C++/CUDA kernels (torch.ops.adain.*); an error if not built",
            op_namespace="adain"),
    Backend("triton", ("cuda", "cpu"), _triton_why_unavailable, _triton_ops, auto=False,
            summary="the Triton kernels (adain_ext.triton); on CPU only with TRITON_INTERPRET=1",
            op_namespace="adain_triton"),
    Backend("reference", ("cpu", "cuda"), _always_available, lambda: _ReferenceOps, auto=True,
            summary="the pure-PyTorch oracle in adain_ext.reference (always available)"),
)}

NAMES = tuple(REGISTRY)  # the concrete backends, in table order


def auto_backend(device_type: str) -> str:
    """The backend backend="auto" runs for tensors of this device type."""
    for backend in REGISTRY.values():
        if backend.auto and backend.why_unavailable(device_type) is None:
            return backend.name
    raise RuntimeError(f"adain: no backend serves {device_type} tensors")  # reference always does


def ops(name: str):
    """The op implementations (mean_std, adain, adain_affine) of the concrete backend `name`."""
    return REGISTRY[name].load_ops()


def present_device_types() -> tuple[str, ...]:
    """The device types this process can put tensors on, among those the backends serve."""
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def availability() -> list[dict]:
    """Per backend, in table order: {"name", "available", "why", "devices", "usable_on"}.

    devices:   the device types it has kernels for.
    usable_on: those of them it can run on in this process (present here and not unavailable).
    available: usable_on is not empty.
    why:       None when it runs on every device type present here that it serves, else the
               reason per device type ("cuda: it was built without cuda kernels").
    """
    rows = []
    for backend in REGISTRY.values():
        present = [d for d in backend.devices if d in present_device_types()]
        reasons = {d: backend.why_unavailable(d) for d in present}
        usable = [d for d in present if reasons[d] is None]
        why = "; ".join(f"{d}: {reason}" for d, reason in reasons.items() if reason is not None)
        rows.append({"name": backend.name, "available": bool(usable), "why": why or None,
                     "devices": backend.devices, "usable_on": tuple(usable)})
    return rows
