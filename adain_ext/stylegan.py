"""StyleGAN-style AdaIN on the fused `affine` op, and `accelerate(model)` for existing generators.

StyleGAN's AdaIN (Karras et al. 2019, NVlabs/stylegan `style_mod` + `instance_norm`):

    [s, b] = A(w)                              # learned affine map of the style vector w
    out    = (1 + s) * (x - mean_x) / sqrt(var_x + eps) + b

with the biased variance (divide by H*W) and eps = 1e-8 added to the variance, which is exactly
`adain_affine(x, mean=b, std=1 + s, eps, unbiased=False)`: one read and one write of x instead of
the half-dozen elementwise passes of the written-out formula.

Mixed precision: the style affine map always runs in float32 (autocast disabled for it; it is an
N x w_dim x 2C matmul, negligible), so `1 + s` keeps float32 precision. The op then runs in the
dtype of x, i.e. whatever the preceding conv produced (bfloat16/float16 under autocast), with the
statistics accumulated in float32 by the kernels, and returns x's dtype, as F.instance_norm
does under autocast (no autocast kernel is registered for the op: it is not on any cast list).
"""
from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from adain_ext import functional, reference
from adain_ext import nn as adain_nn

# (eps, unbiased) of each semantics. StyleGAN: instance norm with the biased variance and 1e-8
# inside the rsqrt (NVlabs/stylegan networks_stylegan.py `instance_norm(x, epsilon=1e-8)`). AdaIN
# paper: the seed's calc_mean_std (unbiased, 1e-5).
SEMANTICS = {"stylegan": (1e-8, False), "adain": (1e-5, True)}

# "fused": the fused op. "reference": adain_ext.reference.adain_affine (the project's oracle, the
# same math written out in PyTorch). "instance_norm": F.instance_norm(x) * scale + shift, the way
# StyleGAN ports write it (StyleGAN semantics only: instance_norm has no unbiased variance).
IMPLS = ("fused", "reference", "instance_norm")


class EqualizedLinear(nn.Module):
    """StyleGAN's dense layer with the equalized learning rate (`use_wscale`): weights are stored
    N(0, 1) / lr_multiplier and scaled by lr_multiplier / sqrt(in_features) at run time."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, (self.weight * self.weight_gain).to(x.dtype),
                        (self.bias * self.bias_gain).to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


class StyleModulation(nn.Module):
    """StyleGAN's AdaIN: (1 + s) * instance_norm(x) + b, with [s, b] = affine(w).

    channels:   C of x (N, C, H, W).
    style_dim:  length of the style vector w (N, style_dim).
    semantics:  "stylegan" (biased variance, eps 1e-8) or "adain" (the AdaIN paper's unbiased
                variance, eps 1e-5); `eps` overrides the eps.
    impl:       "fused" (default), "reference" or "instance_norm" (see IMPLS): the unfused
                formulations are the baselines the fused path is tested and benchmarked against.
    backend:    the op backend when impl == "fused" (see adain_ext.adain_affine).

    The affine map is StyleGAN's: an EqualizedLinear (weights N(0, 1), gain 1/sqrt(style_dim))
    with its bias initialised to 0, applied as scale = 1 + s, so the scale starts around 1 and
    the shift around 0 (rosinality's port stores the 1 in the bias instead: the same function).
    Gradients reach x, w and the affine map's parameters.
    """

    def __init__(self, channels: int, style_dim: int, *, semantics: str = "stylegan",
                 eps: float | None = None, impl: str = "fused", backend: str = "auto"):
        super().__init__()
        if semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {tuple(SEMANTICS)}, got {semantics!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        default_eps, self.unbiased = SEMANTICS[semantics]
        if impl == "instance_norm" and self.unbiased:
            raise ValueError("impl='instance_norm' computes the biased variance; it cannot give "
                             "semantics='adain' (use impl='fused' or 'reference')")
        self.channels, self.semantics = channels, semantics
        self.eps = default_eps if eps is None else float(eps)
        self.impl, self.backend = impl, backend
        self.affine = EqualizedLinear(style_dim, 2 * channels)

    def styles(self, w: torch.Tensor):
        """(scale, shift), each (N, C), float32 (float64 for a float64 module): scale = 1 + s."""
        # At least float32 whatever autocast says: 1 + s in bfloat16 would keep 8 bits of s.
        dtype = torch.promote_types(self.affine.weight.dtype, torch.float32)
        with torch.autocast(w.device.type, enabled=False):
            style = self.affine(w.to(dtype))
        s, b = style.unflatten(1, (2, self.channels)).unbind(1)
        return s + 1, b

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, shift = self.styles(w)
        if self.impl == "fused":
            return functional.adain_affine(x, shift, scale, self.eps, self.unbiased,
                                           backend=self.backend)
        if self.impl == "reference":
            return reference.adain_affine(x, shift, scale, self.eps, self.unbiased)
        per_row = (*scale.shape, *([1] * (x.dim() - 2)))  # (N, C, 1, ...) against (N, C, *)
        out = F.instance_norm(x, eps=self.eps) * scale.view(per_row) + shift.view(per_row)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, semantics={self.semantics!r}, eps={self.eps}, "
                f"impl={self.impl!r}, backend={self.backend!r}")


# --------------------------------------------------------------------------------------------
# accelerate(model)
# --------------------------------------------------------------------------------------------

# Reference functions (adain_ext.reference) and the fused function that computes the same thing.
# The arguments are passed through unchanged: the signatures line up position by position.
_REFERENCE_TO_FUSED = {
    reference.adaptive_instance_normalization: functional.adain,
    reference.adain: functional.adain,
    reference.adain_affine: functional.adain_affine,
    reference.calc_mean_std: functional.mean_std,
    reference.mean_std: functional.mean_std,
}

_MUL = {operator.mul, torch.mul, torch.Tensor.mul}
_ADD = {operator.add, torch.add, torch.Tensor.add}


@dataclass(frozen=True)
class Rewrite:
    """One rewrite accelerate() makes (or would make: see find_fusable)."""

    module: str  # qualified name of the module whose forward is rewritten ("" for the model)
    pattern: str  # "instance_norm_modulation", "reference_call" or "reference_backend"
    detail: str  # what was found, in source terms


def _per_channel(x: torch.Tensor, t) -> bool:
    """True when t broadcasts against x (N, C, H, W) as a per-(n, c) value."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.device != x.device:
        return False
    if not 1 <= t.dim() <= 4:
        return False  # 0-dim tensors promote differently; leave them to the unfused path
    shape = (1,) * (4 - t.dim()) + tuple(t.shape)
    N, C = x.shape[:2]
    return shape[2] == shape[3] == 1 and shape[1] in (1, C) and shape[0] in (1, N)


def _as_statistic(t: torch.Tensor, N: int, C: int) -> torch.Tensor:
    if tuple(t.shape) in ((N, C), (N, C, 1, 1)):
        return t
    shape = (1,) * (4 - t.dim()) + tuple(t.shape)
    return t.reshape(shape).expand(N, C, 1, 1).contiguous()


def instance_norm_modulate(x, scale, shift, eps: float, backend: str = "auto", norm=None):
    """`norm(x) * scale + shift`, fused when scale and shift are per (n, c); `norm` is the
    nn.InstanceNorm2d module (affine=False) the expression used, or None for
    F.instance_norm(x, eps=eps).

    What accelerate() puts in place of that expression. Anything else (spatial scale/shift as in
    SPADE, unbatched 3-D input, Python numbers, 0-dim tensors) runs the original expression.
    The result has the dtype the original expression has (x's dtype promoted with scale's and
    shift's).
    """
    if (isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()
            and _per_channel(x, scale) and _per_channel(x, shift)):
        N, C = x.shape[:2]
        dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)
        return functional.adain_affine(x.to(dtype), _as_statistic(shift, N, C),
                                       _as_statistic(scale, N, C), eps, False, backend=backend)
    normalized = F.instance_norm(x, eps=eps) if norm is None else norm(x)
    return normalized * scale + shift


# Stay calls when a rewritten forward is read again (accelerate twice, a parent's deep trace).
_FUSED_FUNCTIONS = (instance_norm_modulate, functional.adain, functional.adain_affine,
                    functional.mean_std)


class _Tracer(fx.Tracer):
    """Traces one module's forward. Shallow: every child module stays a call (only the module's
    own code is read). Deep: user-defined children are inlined (torch.nn built-ins, our own
    modules and modules already rewritten stay calls), so a pattern split across children (norm
    in one, modulation in a sibling) is seen by their parent."""

    def __init__(self, deep: bool, opaque: set[int], extra_functions: tuple):
        super().__init__(autowrap_modules=(math, reference),
                         autowrap_functions=_FUSED_FUNCTIONS + extra_functions)
        self.deep, self.opaque = deep, opaque

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if not self.deep or id(m) in self.opaque:
            return True
        if isinstance(m, (StyleModulation, adain_nn.AdaIN, EqualizedLinear)):
            return True
        return super().is_leaf_module(m, qualname)


def _is_instance_norm_module(m) -> bool:
    return (isinstance(m, nn.InstanceNorm2d) and type(m).forward is nn.InstanceNorm2d.forward
            and not m.affine and not m.track_running_stats)


_INSTANCE_NORM_SIGNATURE = inspect.signature(F.instance_norm)


def _norm_input_and_eps(root: nn.Module, node: fx.Node):
    """(x, eps) if node computes a plain instance norm (no affine, no running stats), else None."""
    if node.op == "call_module":
        m = root.get_submodule(node.target)
        if _is_instance_norm_module(m) and len(node.args) == 1 and not node.kwargs:
            return node.args[0], m.eps
    if node.op == "call_function" and node.target is F.instance_norm:
        try:
            bound = _INSTANCE_NORM_SIGNATURE.bind(*node.args, **node.kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        a = bound.arguments
        if (all(a[k] is None for k in ("running_mean", "running_var", "weight", "bias"))
                and a["use_input_stats"] is True and isinstance(a["eps"], float)):
            return a["input"], a["eps"]
    return None


def _binary_operands(node: fx.Node, ops: set) -> tuple | None:
    is_op = ((node.op == "call_function" and node.target in ops)
             or (node.op == "call_method" and node.target in {f.__name__ for f in ops}))
    if is_op and len(node.args) == 2 and not node.kwargs:
        return node.args
    return None


def _the_other(pair: tuple, node: fx.Node):
    a, b = pair
    if a is node and b is not node:
        return b
    if b is node and a is not node:
        return a
    return None


def _match_modulations(root: nn.Module, graph: fx.Graph):
    """Yields (norm_node, mul_node, add_node, x, scale, shift, eps) for every
    `instance_norm(x) * scale + shift` whose intermediate values have no other use."""
    for node in graph.nodes:
        found = _norm_input_and_eps(root, node)
        if found is None or len(node.users) != 1:
            continue
        (mul,) = node.users
        mul_args = _binary_operands(mul, _MUL)
        scale = mul_args and _the_other(mul_args, node)
        if not isinstance(scale, fx.Node) or len(mul.users) != 1:
            continue
        (add,) = mul.users
        add_args = _binary_operands(add, _ADD)
        shift = add_args and _the_other(add_args, mul)
        if not isinstance(shift, fx.Node):
            continue
        yield node, mul, add, found[0], scale, shift, found[1]


def _rewrite_graph(root: nn.Module, graph: fx.Graph, backend: str, references: dict) -> list:
    """Rewrites graph in place; returns a description of each rewrite."""
    done = []
    for norm, mul, add, x, scale, shift, eps in list(_match_modulations(root, graph)):
        with graph.inserting_before(add):
            kwargs = {"backend": backend}
            if norm.op == "call_module":
                kwargs["norm"] = graph.get_attr(norm.target)
            fused = graph.call_function(instance_norm_modulate, (x, scale, shift, eps), kwargs)
        add.replace_all_uses_with(fused)
        for dead in (add, mul, norm):
            graph.erase_node(dead)
        what = f"module {norm.target}" if norm.op == "call_module" else "F.instance_norm"
        done.append(("instance_norm_modulation", f"{what}(x) * {scale.name} + {shift.name}"))
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in references:
            original = node.target
            signature = inspect.signature(original)
            try:
                bound = signature.bind(*node.args, **node.kwargs)
            except TypeError:
                continue
            if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                   for p in signature.parameters.values()):
                continue
            node.target = references[original]
            node.args, node.kwargs = tuple(bound.args), {"backend": backend}
            done.append(("reference_call", f"{original.__module__}.{original.__name__}"))
    return done


def _trace(module: nn.Module, deep: bool, opaque: set, extra: tuple) -> fx.Graph | None:
    try:
        return _Tracer(deep, opaque, extra).trace(module)
    except Exception:  # noqa: BLE001  (data-dependent control flow, unsupported Python: skip)
        return None


def _same_in_train_and_eval(module: nn.Module, deep: bool, opaque: set, extra: tuple) -> bool:
    """fx freezes Python branches; refuse modules whose traced code depends on self.training."""
    modes = {m: m.training for m in module.modules()}
    try:
        codes = []
        for training in (True, False):
            module.train(training)
            graph = _trace(module, deep, opaque, extra)
            if graph is None:
                return False
            codes.append(fx.GraphModule(module, graph).code)
        return codes[0] == codes[1]
    finally:
        for m, training in modes.items():
            m.training = training


def _install(module: nn.Module, graph: fx.Graph) -> None:
    """Gives `module` the rewritten forward, keeping the object, its parameters, buffers, hooks
    and state_dict keys: its class becomes a subclass of its class with the new forward."""
    generated = fx.GraphModule(module, graph)
    cls = type(module)
    module.__class__ = type(cls.__name__, (cls,), {
        "forward": type(generated).forward,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "adain_fused_code": generated.code,  # the rewritten forward, for inspection
    })


def _plan(model: nn.Module, backend: str, reference_functions: Mapping | None, apply: bool):
    references = dict(_REFERENCE_TO_FUSED)
    for fn, ref in (reference_functions or {}).items():
        if ref not in _REFERENCE_TO_FUSED:
            known = [f.__name__ for f in _REFERENCE_TO_FUSED]
            raise ValueError(f"reference_functions maps {fn!r} to {ref!r}, which is not one of the "
                             f"adain_ext.reference functions {known}")
        references[fn] = _REFERENCE_TO_FUSED[ref]
    extra = tuple(reference_functions or ())
    rewrites, opaque = [], set()
    names = {m: name for name, m in model.named_modules(remove_duplicate=False)}

    def visit(module: nn.Module):
        for child in module.children():
            visit(child)
        name = names.get(module, "")
        if isinstance(module, (StyleModulation, adain_nn.AdaIN)):
            uses_reference = (module.impl != "fused" if isinstance(module, StyleModulation)
                              else module.backend == "reference")
            if uses_reference:
                rewrites.append(Rewrite(name, "reference_backend", type(module).__name__))
                if apply:
                    if isinstance(module, StyleModulation):
                        module.impl = "fused"
                    module.backend = backend
            opaque.add(id(module))
            return
        if (type(module).__module__.startswith("torch.nn") or id(module) in opaque
                or hasattr(module, "adain_fused_code")):
            return  # built-ins (containers included) have nothing of their own; done already
        for deep in (False, True):
            graph = _trace(module, deep, opaque, extra)
            if graph is None:
                continue
            found = _rewrite_graph(module, graph, backend, references)
            if not found:
                continue
            if not _same_in_train_and_eval(module, deep, opaque, extra):
                return
            rewrites.extend(Rewrite(name, pattern, detail) for pattern, detail in found)
            if apply:
                graph.lint()
                _install(module, graph)
            opaque.add(id(module))
            return

    visit(model)
    return rewrites


def find_fusable(model: nn.Module, *, reference_functions: Mapping | None = None) -> list[Rewrite]:
    """What accelerate(model) would rewrite, without changing the model."""
    return _plan(model, "auto", reference_functions, apply=False)


def accelerate(model: nn.Module, *, backend: str = "auto",
               reference_functions: Mapping[Callable, Callable] | None = None) -> nn.Module:
    """Puts the fused op in place of unfused AdaIN code in an existing model; returns the model
    (the same object, changed in place).

    Supported patterns (each found in the forward of a module, read with torch.fx):

    1. `norm(x) * scale + shift`, where `norm` is an `nn.InstanceNorm2d(affine=False,
       track_running_stats=False)` child or a call `F.instance_norm(x, eps=...)` without weight,
       bias or running statistics; the product and sum may be written `*`/`+`, `torch.mul`/
       `torch.add` or `.mul`/`.add`, in either operand order, and the normalised value and the
       product must have no other use. At run time the fused op is used when scale and shift
       broadcast as per-(n, c) values ((N, C, 1, 1), (1, C, 1, 1), (C, 1, 1), ...); otherwise
       (spatial maps as in SPADE, 3-D input) the original expression runs. The norm, product and
       sum may sit in different child modules (e.g. the InstanceNorm2d inside an nn.Sequential
       and the modulation in a sibling module): the smallest enclosing module is rewritten.
    2. Calls to the reference AdaIN: adain_ext.reference.adaptive_instance_normalization, adain,
       adain_affine, calc_mean_std and mean_std become adain_ext.adain / adain_affine /
       mean_std; `reference_functions` maps your own copies of them (e.g. the seed's
       `adaptive_instance_normalization` pasted into your project) to the reference function
       they equal, e.g. {my_module.adaptive_instance_normalization:
       reference.adaptive_instance_normalization}.
    3. adain_ext modules running a reference path: StyleModulation(impl != "fused") and
       adain_ext.nn.AdaIN(backend="reference") are switched to the fused path.

    Limits: a rewritten module keeps its object, parameters, buffers, hooks and state_dict keys,
    but its forward becomes the fx-traced code: Python branches in it are frozen as they were at
    accelerate() time (modules whose traced code differs between train() and eval() are left
    alone; so are modules fx cannot trace, e.g. control flow on tensor values; their children are
    still searched), and torch.save(model) of the whole object does not pickle (save state_dict).
    Hand-written instance norms (x - mean) * rsqrt(var + eps) are not recognised. The fused op
    checks its inputs: H*W < 2 with the unbiased reference semantics raises where the reference
    returned NaN.
    """
    if backend not in functional.BACKENDS:
        raise ValueError(f"backend must be one of {functional.BACKENDS}, got {backend!r}")
    _plan(model, backend, reference_functions, apply=True)
    return model
