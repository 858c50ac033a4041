"""accelerate(model): puts the fused ops in place of the AdaIN code existing models write.

One matcher per idiom, each a `find` that reads and changes nothing and an `apply` that rewrites
what find returned:

  idiom                                      read from                  Finding.pattern
  nn.InstanceNorm1d/2d/3d(x) * scale + shift  the torch.fx graph         instance_norm_modulation
  F.instance_norm(x, ...) * scale + shift     the torch.fx graph         instance_norm_modulation
  calls to the reference AdaIN                the torch.fx graph         reference_call
  the batch_norm trick (MUNIT/FUNIT)          a run on probe tensors     batch_norm_adain
  adain_ext modules on a reference path       their attributes           reference_backend

`_plan` walks the model, children first, and gives each module to the idioms; `find_fusable`
reports, `accelerate` also applies. docs/accelerate.md lists the idioms with an example each and
what is left alone and why.
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from adain_ext import functional, reference
from adain_ext import nn as adain_nn
from adain_ext.stylegan import FUSED, EqualizedLinear, StyleModulation

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
_INSTANCE_NORM = nn.modules.instancenorm._InstanceNorm
_INSTANCE_NORM_SIGNATURE = inspect.signature(F.instance_norm)


@dataclass(frozen=True)
class Finding:
    """One thing accelerate() rewrites, or one norm it leaves alone and why (see find_fusable)."""

    module: str  # qualified name of the module whose forward holds it ("" for the model)
    pattern: str  # "instance_norm_modulation", "batch_norm_adain", "reference_call",
    #               "reference_backend", or "left_alone"
    detail: str  # what was found, in source terms
    reason: str | None = None  # why it is left alone; None when accelerate() rewrites it

    @property
    def rewritten(self) -> bool:
        return self.reason is None


# ----- What a rewritten forward calls ---------------------------------------------------------

def _per_channel(x: torch.Tensor, t) -> bool:
    """True when t broadcasts against x (N, C, *) as a per-(n, c) value."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.device != x.device:
        return False
    if not 1 <= t.dim() <= x.dim():
        return False  # 0-dim tensors promote differently; leave them to the unfused path
    shape = (1,) * (x.dim() - t.dim()) + tuple(t.shape)
    N, C = x.shape[:2]
    return all(s == 1 for s in shape[2:]) and shape[1] in (1, C) and shape[0] in (1, N)


def _as_statistic(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-(n, c) value that broadcasts against x, as the (N, C) statistic the op takes."""
    N, C = x.shape[:2]
    shape = (1,) * (x.dim() - t.dim()) + tuple(t.shape)
    return t.reshape(shape[:2]).expand(N, C)


def _channel_vector(t, x: torch.Tensor) -> bool:
    """True for None or a (C,) float tensor on x's device: an instance norm's affine weight."""
    return t is None or (isinstance(t, torch.Tensor) and t.is_floating_point()
                         and tuple(t.shape) == (x.shape[1],) and t.device == x.device)


def _prologue_operands(x: torch.Tensor, a, b):
    """(noise, noise_weight) for the op's prologue when x + a * b is noise injection the op takes:
    one of a, b per channel ((1, C, 1, ...) or a single value), the other (N, 1, *) or (N, C, *)
    noise (N may be 1: expanded); else None. x + a * b = x + b * a: the roles follow the shapes."""
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() and t.device == x.device
               for t in (a, b)):
        return None
    N, C = x.shape[:2]
    for w, n in ((a, b), (b, a)):
        per_channel = w.numel() == 1 or (w.dim() == x.dim() and w.shape[1] == C
                                         and w.numel() == C)
        noise_like = (n.dim() == x.dim() and n.shape[0] in (1, N) and n.shape[1] in (1, C)
                      and n.shape[2:] == x.shape[2:])
        if per_channel and noise_like:
            return (n.expand(N, *n.shape[1:]) if n.shape[0] != N else n), w.reshape(-1)
    return None


def instance_norm_modulate(x, scale, shift, eps: float, backend: str = "auto", norm=None,
                           weight=None, bias=None, activation: str | None = None,
                           negative_slope: float = 0.01, prologue_a=None, prologue_b=None,
                           pre_activation: str | None = None, pre_negative_slope: float = 0.01):
    """`act(instance_norm(x) * scale + shift)`, fused when scale and shift are per (n, c); act
    is none, "relu" or "leaky_relu" (negative_slope), the activation that followed the
    expression in the model. With prologue_a and prologue_b, x is first
    pre_activation(x + prologue_a * prologue_b), the noise injection and activation before the
    norm (StyleGAN), fused as the op's prologue when one of the two is a per-channel weight and
    the other noise (else computed as written).

    `norm` is the nn.InstanceNorm1d/2d/3d module the expression used (its affine weight and bias,
    if any, are read here, at call time), or None for F.instance_norm(x, weight=weight,
    bias=bias, eps=eps). The norm's own affine map folds into the target statistics:
    (x_hat * w + b) * scale + shift = x_hat * (w * scale) + (b * scale + shift).

    What accelerate() puts in place of that expression. Anything else (spatial scale/shift as in
    SPADE, unbatched input, Python numbers, 0-dim tensors) runs the original expression.
    The result has the dtype the original expression has (x's dtype promoted with scale's and
    shift's).
    """
    if norm is not None:
        weight, bias = (norm.weight, norm.bias) if norm.affine else (None, None)
        batched = isinstance(x, torch.Tensor) and x.dim() == norm._get_no_batch_dim() + 1
    else:
        batched = isinstance(x, torch.Tensor) and x.dim() >= 3
    fusable = (batched and x.is_floating_point() and _per_channel(x, scale)
               and _per_channel(x, shift) and _channel_vector(weight, x)
               and _channel_vector(bias, x))
    prologue = {}
    if prologue_a is not None:
        operands = _prologue_operands(x, prologue_a, prologue_b) if fusable else None
        if operands is None:  # as the model wrote it
            x = reference.activate(x + prologue_a * prologue_b, pre_activation or "none",
                                   pre_negative_slope)
        else:
            noise, noise_weight = operands
            prologue = {"noise": noise, "noise_weight": noise_weight,
                        "pre_activation": pre_activation or "none",
                        "pre_negative_slope": pre_negative_slope}
    if fusable:
        dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)
        if prologue:  # x + w * noise has the dtype of all three
            dtype = torch.promote_types(dtype, torch.promote_types(
                prologue["noise"].dtype, prologue["noise_weight"].dtype))
            prologue["noise"] = prologue["noise"].to(dtype)
        std, mean = _as_statistic(scale, x), _as_statistic(shift, x)
        if bias is not None:
            mean = mean + std * bias
        if weight is not None:
            std = std * weight
        return functional.adain_affine(x.to(dtype), mean, std, eps, False, activation=activation,
                                       negative_slope=negative_slope, backend=backend, **prologue)
    if norm is not None:
        normalized = norm(x)
    else:
        normalized = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    return reference.activate(normalized * scale + shift, activation or "none", negative_slope)


# Stay calls when a rewritten forward is read again (accelerate twice, a parent's deep trace).
_FUSED_FUNCTIONS = (instance_norm_modulate, functional.adain, functional.adain_affine,
                    functional.mean_std)


# ----- Reading a forward with torch.fx, and giving a module a new forward ---------------------

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


def _owner(node: fx.Node, default: str) -> str:
    """The module whose own code made `node`: the innermost user-defined module a deep trace
    inlined around it (torch.nn containers do not count), else `default`."""
    for qualname, cls in reversed(list(node.meta.get("nn_module_stack", {}).values())):
        if qualname != node.target and not cls.__module__.startswith("torch.nn"):
            return qualname
    return default


class _AssignsAttributes(Exception):
    """The traced forward assigned module attributes: a graph does not record that."""


def _run_tracer(module: nn.Module, deep: bool, opaque: set, extra: tuple) -> fx.Graph:
    """Traces the forward, then puts back every module attribute the forward assigned (they
    would keep the tracer's proxies) and refuses the trace if there were any: a rewritten
    forward would drop them, e.g. MUNIT's generator assigning its AdaIN layers' weight and bias
    before calling its decoder."""
    saved = {m: dict(m.__dict__) for m in module.modules()}
    names = {m: name for name, m in module.named_modules()}
    try:
        graph = _Tracer(deep, opaque, extra).trace(module)
    finally:
        assigned = []
        for m, attributes in saved.items():
            assigned += [prefix + key for prefix in [f"{names[m]}." if names[m] else ""]
                         for key, value in m.__dict__.items()
                         if key not in attributes or attributes[key] is not value]
            m.__dict__.clear()
            m.__dict__.update(attributes)
    if assigned:
        raise _AssignsAttributes(f"its forward assigns {', '.join(sorted(assigned))}, "
                                 "which a traced forward would not do")
    return graph


def _trace(module: nn.Module, deep: bool, opaque: set, extra: tuple) -> fx.Graph | None:
    try:
        return _run_tracer(module, deep, opaque, extra)
    except Exception:  # noqa: BLE001  (data-dependent control flow, unsupported Python: skip)
        return None


def _trace_error(module: nn.Module, opaque: set, extra: tuple) -> str:
    """Why torch.fx cannot trace the module's forward, in one line."""
    try:
        _run_tracer(module, False, opaque, extra)
    except _AssignsAttributes as error:
        return str(error)
    except Exception as error:  # noqa: BLE001
        return ("torch.fx cannot trace it: "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return ""


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


def _install(module: nn.Module, forward, code: str, **attributes) -> None:
    """Gives `module` a new forward, keeping the object, its parameters, buffers, hooks and
    state_dict keys: its class becomes a subclass of its class with the new forward."""
    cls = type(module)
    module.__class__ = type(cls.__name__, (cls,), {
        "forward": forward,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "adain_fused_code": code,  # the rewritten forward, for inspection
        **attributes,
    })


# ----- Idioms in the traced graph: instance norm modulation (module or function), reference calls

@dataclass(frozen=True)
class _Norm:
    """An instance norm accelerate() can fuse: the node computing it, read off the graph."""

    x: fx.Node
    eps: float
    weight: object  # F.instance_norm's weight/bias arguments (a module's are read at call time)
    bias: object
    what: str  # in source terms, for the report


@dataclass(frozen=True)
class _Modulation:
    """`norm(x) * scale + shift` found in a graph: the nodes apply() replaces by one call."""

    node: fx.Node  # the norm
    norm: _Norm
    mul: fx.Node
    add: fx.Node
    scale: fx.Node
    shift: fx.Node


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


def _node_text(node: fx.Node) -> str:
    if node.op == "output":
        return "the module's output"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
    return f"{node.op} {target}"


def _sole_binary_user(node: fx.Node, ops, value: str, op_name: str, operand: str):
    """(user, its other operand, None) when `node`'s one use is a binary op of `ops` whose other
    operand is a tensor; else (None, None, why not). `value` names node in the reason ("its
    output"), `op_name` the op ("multiply"), `operand` the other operand ("scale")."""
    if len(node.users) != 1:
        return None, None, f"{value} has {len(node.users)} uses, not one {op_name}"
    (user,) = node.users
    args = _binary_operands(user, ops)
    other = args and _the_other(args, node)
    if args and not isinstance(other, fx.Node):
        return None, None, f"the {operand} is {other!r}, not a tensor"
    if not isinstance(other, fx.Node):
        article = "an" if op_name[0] in "aeiou" else "a"
        return None, None, f"{value} goes to {_node_text(user)}, not {article} {op_name}"
    return user, other, None


def _match_modulation(node: fx.Node) -> tuple[tuple | None, str | None]:
    """((mul, add, scale, shift), None) when the instance norm `node` is followed by
    `* scale + shift` and neither intermediate value has another use; else (None, why not)."""
    mul, scale, why = _sole_binary_user(node, _MUL, "its output", "multiply", "scale")
    if why:
        return None, why
    add, shift, why = _sole_binary_user(mul, _ADD, "the product", "add", "shift")
    if why:
        return None, why
    return (mul, add, scale, shift), None


class _NormModulation:
    """`norm(x) * scale + shift`: the product and sum written `*`/`+`, torch.mul/torch.add or
    .mul/.add, in either operand order, and neither the normalised value nor the product used
    elsewhere. Becomes one instance_norm_modulate call. The subclasses read the norm."""

    def describe(self, root: nn.Module, node: fx.Node) -> str | None:
        """The norm `node` computes, in source terms; None when it is not this idiom's norm."""
        raise NotImplementedError

    def read(self, root: nn.Module, node: fx.Node) -> tuple[_Norm | None, str | None]:
        """(the norm, None) when accelerate() can fuse it, else (None, why not)."""
        raise NotImplementedError

    def norm_kwargs(self, graph: fx.Graph, match: _Modulation) -> dict:
        """What instance_norm_modulate is told of the norm."""
        raise NotImplementedError

    def find(self, root: nn.Module, node: fx.Node) -> tuple[_Modulation | None, str | None]:
        """(the modulation, None), or (None, why not) for a norm of this idiom left alone."""
        norm, why_not = self.read(root, node)
        if norm is None:
            return None, why_not
        found, why_not = _match_modulation(node)
        if found is None:
            return None, why_not
        return _Modulation(node, norm, *found), None

    def apply(self, graph: fx.Graph, match: _Modulation, backend: str) -> str:
        """Replaces the norm, product and sum by one call; returns what it replaced."""
        norm, scale, shift = match.norm, match.scale, match.shift
        with graph.inserting_before(match.add):
            kwargs = {"backend": backend, **self.norm_kwargs(graph, match)}
            fused = graph.call_function(instance_norm_modulate, (norm.x, scale, shift, norm.eps),
                                        kwargs)
        match.add.replace_all_uses_with(fused)
        for dead in (match.add, match.mul, match.node):
            graph.erase_node(dead)
        return f"{norm.what}(x) * {scale.name} + {shift.name}"


class _ModuleNormModulation(_NormModulation):
    """The norm is an nn.InstanceNorm1d/2d/3d child called on x alone, with
    track_running_stats=False and its own forward; affine or not (its weight and bias are read at
    each call and fold into the modulation)."""

    def describe(self, root, node):
        if node.op == "call_module":
            m = root.get_submodule(node.target)
            if isinstance(m, _INSTANCE_NORM):
                return f"{type(m).__name__} {node.target}"
        return None

    def read(self, root, node):
        m = root.get_submodule(node.target)
        if type(m).forward is not _INSTANCE_NORM.forward:
            return None, f"{type(m).__name__} overrides the instance norm's forward"
        if m.track_running_stats:
            return None, (f"{type(m).__name__}(affine={m.affine}, track_running_stats=True) "
                          "uses its running statistics in eval mode and updates them in train mode")
        if len(node.args) != 1 or node.kwargs:
            return None, "called with more than one argument"
        return _Norm(node.args[0], m.eps, None, None, self.describe(root, node)), None

    def norm_kwargs(self, graph, match):
        return {"norm": graph.get_attr(match.node.target)}


class _FunctionNormModulation(_NormModulation):
    """The norm is a call F.instance_norm(x, weight=..., bias=..., eps=...) that normalises with
    the input's statistics, with an eps known when accelerate() runs."""

    def describe(self, root, node):
        if node.op == "call_function" and node.target is F.instance_norm:
            return "F.instance_norm"
        return None

    def read(self, root, node):
        try:
            bound = _INSTANCE_NORM_SIGNATURE.bind(*node.args, **node.kwargs)
        except TypeError:
            return None, "its arguments do not match F.instance_norm's signature"
        bound.apply_defaults()
        a = bound.arguments
        if a["running_mean"] is not None or a["running_var"] is not None:
            return None, "F.instance_norm with running_mean/running_var updates or uses them"
        if a["use_input_stats"] is not True:
            return None, ("F.instance_norm(use_input_stats=...) may normalise with running "
                          "statistics")
        if not isinstance(a["eps"], float):
            return None, f"eps is {a['eps']!r}, not a number known when accelerate() runs"
        return _Norm(a["input"], a["eps"], a["weight"], a["bias"], "F.instance_norm"), None

    def norm_kwargs(self, graph, match):
        return {"weight": match.norm.weight, "bias": match.norm.bias}


_NORM_MODULATIONS = (_ModuleNormModulation(), _FunctionNormModulation())


def _find_reference_call(node: fx.Node, references: dict) -> inspect.BoundArguments | None:
    """The arguments of a call to a reference function (adain_ext.reference's or a copy named in
    reference_functions) when they bind to its named parameters (no *args, **kwargs); else
    None."""
    if node.op != "call_function" or node.target not in references:
        return None
    signature = inspect.signature(node.target)
    try:
        bound = signature.bind(*node.args, **node.kwargs)
    except TypeError:
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
        return None
    return bound


def _apply_reference_call(node: fx.Node, bound: inspect.BoundArguments, references: dict,
                          backend: str) -> str:
    """Calls the fused function with the same arguments, every one of them: the reference's
    defaults filled in (an argument given by keyword after a skipped one, as `unbiased=False`
    with no eps, was dropped before), passed positionally as far as the fused function takes
    positional parameters and by name after that (adain_affine's keyword-only activation and
    negative_slope). Returns the function it replaced."""
    original = node.target
    fused = references[original]
    bound.apply_defaults()
    values = list(bound.arguments.items())
    positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                     for p in inspect.signature(fused).parameters.values())
    node.target = fused
    node.args = tuple(value for _, value in values[:positional])
    node.kwargs = {**dict(values[positional:]), "backend": backend}
    return f"{original.__module__}.{original.__name__}"


# ----- The activation after a fused AdaIN: folded into the op as its epilogue -----------------
#
# StarGAN v2's AdainResBlk runs self.actv (LeakyReLU(0.2)) on its AdaIN child's output, MUNIT's
# Conv2dBlock self.activation (ReLU) on its AdaptiveInstanceNorm2d's, AdaIN-VC-like code F.relu on
# its own modulation: one more read and write of the activation forward and backward, which the
# op's epilogue (adain_affine(..., activation=)) saves. Folded when the fused value has that one
# use: a fused call in the same graph takes activation=/negative_slope= keywords; a rewritten
# child called by its parent is called through its activated forward (adain_forward_activated,
# the same graph with the activation passed to its final fused call).

_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_}
_LEAKY_RELU_FUNCTIONS = {F.leaky_relu, F.leaky_relu_}
_RELU_METHODS = {"relu", "relu_"}
_FUSED_CALLS = (instance_norm_modulate, functional.adain_affine)
_ACTIVATED_FORWARD = "adain_forward_activated"


def _read_activation(root: nn.Module, node: fx.Node, value: fx.Node):
    """(activation, negative_slope) when `node` applies ReLU or LeakyReLU to `value` alone (as a
    module, a function or a method, in place or not), else None. In place is safe to fold: the
    value it would overwrite has no other use."""
    args, kwargs = node.args, dict(node.kwargs)
    if not args or args[0] is not value:
        return None
    if node.op == "call_module":
        m = root.get_submodule(node.target)
        if len(args) != 1 or kwargs:
            return None
        if type(m) is nn.ReLU:
            return ("relu", 0.01)
        if type(m) is nn.LeakyReLU and isinstance(m.negative_slope, (int, float)):
            return ("leaky_relu", float(m.negative_slope))
        return None
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return ("relu", 0.01) if len(args) == 1 and not kwargs else None
    if node.op != "call_function":
        return None
    if node.target in _RELU_FUNCTIONS:
        extra = list(args[1:]) + [v for k, v in kwargs.items() if k == "inplace"]
        if len(args) + len(kwargs) - len(extra) != 1 or any(not isinstance(v, bool) for v in extra):
            return None
        return ("relu", 0.01)
    if node.target in _LEAKY_RELU_FUNCTIONS:
        try:
            bound = inspect.signature(node.target).bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        slope = bound.arguments["negative_slope"]
        if not isinstance(slope, (int, float)) or isinstance(slope, bool):
            return None
        return ("leaky_relu", float(slope))
    return None


def _fused_producer(root: nn.Module, node: fx.Node, activatable: set) -> str | None:
    """What `node` is, in source terms, when its output can take an activation epilogue: a fused
    call without one, or a call of a child whose rewritten forward ends in one."""
    if (node.op == "call_function" and node.target in _FUSED_CALLS
            and node.kwargs.get("activation") in (None, "none")):
        return f"{node.target.__name__}(...)"
    if node.op == "call_module" and id(root.get_submodule(node.target)) in activatable:
        return f"{type(root.get_submodule(node.target)).__name__} {node.target}"
    return None


def _fold_activations(root: nn.Module, graph: fx.Graph, activatable: set, apply: bool):
    """Folds every activation whose input is a fused value with no other use (see above).
    Returns (rewrites, left_alone) as _rewrite_graph's."""
    done, left_alone = [], []
    for node in list(graph.nodes):
        what = _fused_producer(root, node, activatable)
        if what is None:
            continue
        acts = [(user, _read_activation(root, user, node)) for user in node.users]
        acts = [(user, act) for user, act in acts if act is not None]
        if not acts:
            continue
        user, (activation, slope) = acts[0]
        name, owner = f"{activation}({what})", _owner(node, "")
        if len(node.users) != 1:
            left_alone.append((node, name, f"the value before the {activation} has "
                                           f"{len(node.users)} uses, not one"))
            continue
        if node.op == "call_module":
            child = root.get_submodule(node.target)
            if child._forward_hooks or child._forward_pre_hooks:
                left_alone.append((node, name, "it has forward hooks, which would not see the "
                                               "output before the activation"))
                continue
            if apply:
                with graph.inserting_before(node):
                    fused = graph.call_method(_ACTIVATED_FORWARD,
                                              (graph.get_attr(node.target), *node.args),
                                              {**node.kwargs, "adain_activation": activation,
                                               "adain_negative_slope": slope})
                user.replace_all_uses_with(fused)
                graph.erase_node(user)
                graph.erase_node(node)
        else:
            node.kwargs = {**node.kwargs, "activation": activation, "negative_slope": slope}
            user.replace_all_uses_with(node)
            graph.erase_node(user)
        slope_text = f", negative_slope={slope}" if activation == "leaky_relu" else ""
        done.append(("activation_epilogue", f"{name} -> activation={activation!r}{slope_text}",
                     owner))
    return done, left_alone


def _activated_forward(module: nn.Module, graph: fx.Graph):
    """The forward of `module`'s rewritten graph with two more keyword parameters,
    adain_activation and adain_negative_slope, passed to the fused call that makes its output;
    None when its output is not such a call (with no other use)."""
    (output,) = [n for n in graph.nodes if n.op == "output"]
    result = output.args[0]
    if not (isinstance(result, fx.Node) and result.op == "call_function"
            and result.target in _FUSED_CALLS and len(result.users) == 1
            and result.kwargs.get("activation") in (None, "none")):
        return None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if any(str(p.target).startswith("**") for p in placeholders):
        return None
    variant = copy.deepcopy(graph)
    first = next(n for n in variant.nodes if n.op != "placeholder")
    with variant.inserting_before(first):
        activation = variant.placeholder("adain_activation", default_value="none")
        slope = variant.placeholder("adain_negative_slope", default_value=0.01)
    (output,) = [n for n in variant.nodes if n.op == "output"]
    output.args[0].kwargs = {**output.args[0].kwargs, "activation": activation,
                             "negative_slope": slope}
    variant.lint()
    return type(fx.GraphModule(module, variant)).forward


# ----- The prologue: noise injection and an activation before a fused norm ------------------
#
# StyleGAN (rosinality's StyledConvBlock, NVlabs' layer epilogue) writes
#     out = x + weight * noise          (NoiseInjection: weight (1, C, 1, 1), noise (N, 1, H, W))
#     out = lrelu(out)                  (LeakyReLU(0.2))
#     out = adain(out, style)
# A fused norm whose input is such a value (each step's value used only by the next) gets the
# noise and activation as the op's prologue: instance_norm_modulate(x, ..., prologue_a=weight,
# prologue_b=noise, pre_activation=...), which checks at run time that one is a per-channel
# weight and the other noise (else computes the expression as written). The norm may be a
# rewritten child called by the parent that adds the noise: the child's adain_forward_prologue
# (its graph with the prologue's four keyword placeholders passed to the fused call that reads
# its input) is called instead.

_PROLOGUE_FORWARD = "adain_forward_prologue"
_PROLOGUE_KWARGS = ("prologue_a", "prologue_b", "pre_activation", "pre_negative_slope")


def _read_prologue(root: nn.Module, x: fx.Node):
    """((base, a, b, pre_activation, pre_negative_slope, dead nodes), None) when x is
    act(base + a * b) or base + a * b with every intermediate value used once; (None, why not)
    when it is that expression but a value has another use; (None, None) otherwise."""
    pre, act, dead = x, ("none", 0.01), []
    if x.op in ("call_module", "call_function", "call_method") and x.args and isinstance(
            x.args[0], fx.Node):
        read = _read_activation(root, x, x.args[0])
        if read is not None:
            pre, act, dead = x.args[0], read, [x]
    operands = _binary_operands(pre, _ADD)
    if not operands or not all(isinstance(t, fx.Node) for t in operands):
        return None, None
    for base, product in (operands, operands[::-1]):
        factors = _binary_operands(product, _MUL)
        if not (factors and base is not product and all(isinstance(t, fx.Node) for t in factors)):
            continue
        text = f"{base.name} + {factors[0].name} * {factors[1].name}"
        for value, what in ((x, f"the value {act[0]}({text})" if dead else None),
                            (pre, f"the value {text}"), (product, "the product")):
            if what and len(value.users) != 1:
                return None, f"{what} has {len(value.users)} uses, not one"
        return (base, factors[0], factors[1], act[0], act[1], dead + [pre, product]), None
    return None, None


def _prologue_target(root: nn.Module, node: fx.Node, prologue_ready: set) -> str | None:
    """What `node` is when its input x can take the prologue: an instance_norm_modulate call
    without one, or a call of a child with adain_forward_prologue."""
    if (node.op == "call_function" and node.target is instance_norm_modulate
            and node.kwargs.get("prologue_a") is None):
        return "instance_norm_modulate(...)"
    if node.op == "call_module" and id(root.get_submodule(node.target)) in prologue_ready:
        return f"{type(root.get_submodule(node.target)).__name__} {node.target}"
    return None


def _fold_prologues(root: nn.Module, graph: fx.Graph, prologue_ready: set, apply: bool):
    """Folds every noise injection (+ activation) whose value a fused norm alone reads into
    that norm's prologue. Returns (rewrites, left_alone) as _rewrite_graph's."""
    done, left_alone = [], []
    for node in list(graph.nodes):
        what = _prologue_target(root, node, prologue_ready)
        if what is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        found, why_not = _read_prologue(root, node.args[0])
        if why_not is not None:
            left_alone.append((node, f"the noise injection before {what}", why_not))
        if found is None:
            continue
        base, a, b, activation, slope, dead = found
        act_text = "" if activation == "none" else f"{activation}("
        name = f"{act_text}{base.name} + {a.name} * {b.name}{')' if act_text else ''}"
        if node.op == "call_module":
            child = root.get_submodule(node.target)
            if child._forward_pre_hooks:
                left_alone.append((node, f"{name} -> {what}", "it has forward pre-hooks, which "
                                   "would see the input before the noise and activation"))
                continue
        if apply:
            values = dict(zip(_PROLOGUE_KWARGS, (a, b, activation, slope)))
            if node.op == "call_module":
                with graph.inserting_before(node):
                    fused = graph.call_method(
                        _PROLOGUE_FORWARD, (graph.get_attr(node.target), base, *node.args[1:]),
                        {**node.kwargs, **{f"adain_{k}": v for k, v in values.items()}})
                node.replace_all_uses_with(fused)
                graph.erase_node(node)
            else:
                node.args = (base, *node.args[1:])
                node.kwargs = {**node.kwargs, **values}
            for dead_node in dead:  # users first: the activation, the sum, the product
                graph.erase_node(dead_node)
        slope_text = f", pre_negative_slope={slope}" if activation == "leaky_relu" else ""
        done.append(("prologue", f"{name} -> the prologue of {what}, "
                                 f"pre_activation={activation!r}{slope_text}", _owner(node, "")))
    return done, left_alone


def _prologue_forward(module: nn.Module, graph: fx.Graph):
    """The forward of `module`'s rewritten graph with the prologue's four keyword parameters
    (adain_prologue_a, ...) passed to the instance_norm_modulate call that reads its first input
    (that input's only use); None when there is no such call."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders or any(str(p.target).startswith("*") for p in placeholders):
        return None
    first = placeholders[0]
    (user,) = first.users if len(first.users) == 1 else (None,)
    if not (user is not None and user.op == "call_function"
            and user.target is instance_norm_modulate and user.args[0] is first
            and user.kwargs.get("prologue_a") is None):
        return None
    variant = copy.deepcopy(graph)
    placeholders = [n for n in variant.nodes if n.op == "placeholder"]
    (user,) = placeholders[0].users
    defaults = (None, None, "none", 0.01)
    with variant.inserting_after(placeholders[-1]):
        added = [variant.placeholder(f"adain_{k}", default_value=d)
                 for k, d in zip(reversed(_PROLOGUE_KWARGS), reversed(defaults))]
    user.kwargs = {**user.kwargs, **dict(zip(_PROLOGUE_KWARGS, reversed(added)))}
    variant.lint()
    return type(fx.GraphModule(module, variant)).forward


def _rewrite_graph(root: nn.Module, graph: fx.Graph, backend: str, references: dict,
                   activatable: frozenset | set = frozenset(), apply: bool = True,
                   prologue_ready: frozenset | set = frozenset()):
    """Applies the graph idioms to graph in place, node by node (a rewrite can change what the
    nodes after it match), then folds the activations that follow fused values. Returns
    (rewrites, left_alone, consumed): (pattern, detail, owner) per rewrite; (node, what, reason)
    per instance norm or activation left alone; (owner, what) per rewritten norm from an inlined
    child (see _owner)."""
    done, left_alone, consumed = [], [], []
    for node in list(graph.nodes):
        for idiom in _NORM_MODULATIONS:
            what = idiom.describe(root, node)
            if what is None:
                continue
            match, why_not = idiom.find(root, node)
            if match is None:
                left_alone.append((node, what, why_not))
                continue
            owner = _owner(node, "")
            if owner:  # the child's own report names the norm relative to the child
                consumed.append((owner, what.replace(f" {owner}.", " ")))
            done.append(("instance_norm_modulation", idiom.apply(graph, match, backend), owner))
    for node in list(graph.nodes):
        bound = _find_reference_call(node, references)
        if bound is not None:
            owner = _owner(node, "")
            done.append(("reference_call", _apply_reference_call(node, bound, references, backend),
                         owner))
    if activatable is None:  # folding turned off
        return done, left_alone, consumed
    folded, activations_left = _fold_activations(root, graph, activatable, apply)
    prologues, prologues_left = _fold_prologues(root, graph, prologue_ready, apply)
    return (done + folded + prologues, left_alone + activations_left + prologues_left,
            consumed)


# ----- The batch_norm trick (MUNIT / FUNIT AdaptiveInstanceNorm2d) ---------------------------
#
# Those modules normalise x (N, C, *) as one batch of N*C channels:
#     F.batch_norm(x.contiguous().view(1, N*C, *x.shape[2:]), running_mean.repeat(N),
#                  running_var.repeat(N), self.weight, self.bias, True, momentum, eps)
# then view the result back to x's shape. With training=True batch_norm uses the batch statistics
# of each of the N*C channels (biased variance, eps on the variance), i.e. instance norm, and
# `weight`/`bias` (N*C,), assigned by the model before each call, scale and shift each (n, c):
# adain_affine(x, mean=bias.view(N, C), std=weight.view(N, C), eps, unbiased=False). The running
# statistics it updates are the repeated copies, thrown away. Such forwards unpack x.size()[2:],
# which torch.fx cannot trace, so the module's forward is run once per rank and mode on probe
# tensors and every tensor operation it makes is recorded and checked instead.

_PROBE_SPATIAL = {3: (5,), 4: (3, 4), 5: (2, 3, 2)}  # the ranks the op takes: (N, C, *)
_SHAPE_QUERIES = {"size", "dim", "__get__", "__len__"}  # .size(), .dim(), .shape/.ndim, len()
_RESHAPES = {"view", "reshape", "contiguous", "view_as", "flatten", "unflatten"}


class _Recorder(torch.overrides.TorchFunctionMode):
    """Records every torch function a forward calls: (name, function, args, kwargs, output)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((getattr(func, "__name__", repr(func)), func, args, kwargs, out))
        return out


def _assigned_affine(module: nn.Module) -> bool:
    """True when `weight` and `bias` are plain attributes (assigned by the model per call), not
    parameters or buffers: with a running_mean buffer, the batch_norm trick's signature."""
    return all(hasattr(module, name) and name not in module._parameters
               and name not in module._buffers for name in ("weight", "bias"))


def _calls(module: nn.Module, function_name: str) -> bool:
    """True when the module's forward refers to a function of that name (e.g. F.batch_norm)."""
    code = getattr(type(module).forward, "__code__", None)
    return code is not None and function_name in code.co_names


def _produced_by(calls, tensor, kinds: set):
    """Follows `tensor` back through calls named in `kinds`; returns the first tensor not made by
    one of them."""
    made = {id(out): (name, args) for name, _, args, _, out in calls if isinstance(out, torch.Tensor)}
    while True:
        name, args = made.get(id(tensor), (None, None))
        if name not in kinds or args[0] is tensor:  # x.contiguous() may return x itself
            return tensor
        tensor = args[0]


_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


def _channels(module: nn.Module) -> int:
    return int(getattr(module, "num_features", 0) or module.running_mean.numel())


def _probe_batch_norm_trick(module: nn.Module, rank: int) -> tuple[float | None, str | None]:
    """(eps, None) if module's forward, in its current mode, computes the batch_norm trick on a
    (N, C, *) input of this rank; else (None, why not). The module is left as it was."""
    C, N = _channels(module), 2
    like = module.running_mean
    generator = torch.Generator().manual_seed(0)  # the user's random streams stay untouched

    def probe(*shape):
        return torch.randn(*shape, generator=generator).to(like.device, like.dtype)

    x, weight, bias = probe(N, C, *_PROBE_SPATIAL[rank]), probe(N * C).abs() + 0.5, probe(N * C)
    assigned = module.weight, module.bias
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    module.weight, module.bias = weight, bias
    failure = None
    try:
        with torch.no_grad(), _Recorder() as recorder:
            out = type(module).forward(module, x)
    except Exception as error:  # noqa: BLE001  (e.g. `b, c, h, w = x.size()` on another rank)
        message = str(error).splitlines()[0] if str(error) else ""
        failure = f"its forward fails on a {rank}-D input ({type(error).__name__}: {message})"
    finally:
        module.weight, module.bias = assigned
    changed = [name for name, b in module.named_buffers() if not torch.equal(b, buffers[name])]
    with torch.no_grad():
        for name, b in module.named_buffers():
            b.copy_(buffers[name])
    if failure or changed:
        return None, failure or f"its forward changes the buffer {changed[0]}"
    calls = recorder.calls
    others = sorted({name for name, *_ in calls
                     if name not in _SHAPE_QUERIES | _RESHAPES | {"repeat", "batch_norm"}})
    if others:
        return None, f"its forward also calls {', '.join(others)}"
    norms = [c for c in calls if c[1] is F.batch_norm or c[1] is torch.batch_norm]
    if len(norms) != 1:
        return None, f"its forward calls batch_norm {len(norms)} times"
    _, func, args, kwargs, normalized = norms[0]
    if func is not F.batch_norm:
        return None, "it calls torch.batch_norm rather than F.batch_norm"
    a = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    a = a.arguments
    if a["training"] is not True:
        return None, ("F.batch_norm(training=False) normalises with the running statistics in "
                      f"{'train' if module.training else 'eval'} mode")
    if a["weight"] is not weight or a["bias"] is not bias:
        return None, "F.batch_norm's weight and bias are not self.weight and self.bias"
    if not isinstance(a["eps"], float):
        return None, f"eps is {a['eps']!r}, not a number"
    grouped = a["input"]
    if (_produced_by(calls, grouped, _RESHAPES) is not x
            or tuple(grouped.shape) != (1, N * C, *x.shape[2:])):
        return None, "F.batch_norm's input is not x viewed as (1, N*C, *x.shape[2:])"
    for name in ("running_mean", "running_var"):
        stat = a[name]
        if stat is not None and _produced_by(calls, stat, {"repeat"}) is stat:
            return None, f"F.batch_norm's {name} is not a repeated copy (it would be updated)"
    if (not isinstance(out, torch.Tensor) or out.shape != x.shape
            or _produced_by(calls, out, _RESHAPES) is not normalized):
        return None, "its output is not F.batch_norm's result viewed back to x's shape"
    return a["eps"], None


def _batch_norm_trick_forward(original):
    """The forward that replaces a recognised batch_norm-trick module's: the fused op where the
    probe verified the module's (mode, rank) and the assigned weight and bias fit, else the
    original forward. weight, bias and eps are read at each call. With adain_activation (the
    activated forward a parent calls, see _fold_activations) the activation is the op's
    epilogue, or follows the original forward."""

    def forward(self, x, adain_activation: str = "none", adain_negative_slope: float = 0.01):
        weight, bias = self.weight, self.bias
        plan = type(self).adain_batch_norm_plan
        if (isinstance(x, torch.Tensor) and (self.training, x.dim()) in plan
                and x.is_floating_point()):
            N, C = x.shape[:2]
            if C == type(self).adain_channels and all(
                    isinstance(t, torch.Tensor) and tuple(t.shape) == (N * C,)
                    and t.dtype == x.dtype and t.device == x.device for t in (weight, bias)):
                eps = plan[(self.training, x.dim())]
                eps = self.eps if eps is None else eps
                return functional.adain_affine(x, bias.view(N, C), weight.view(N, C), eps, False,
                                               activation=adain_activation,
                                               negative_slope=adain_negative_slope,
                                               backend=type(self).adain_backend)
        return reference.activate(original(self, x), adain_activation, adain_negative_slope)

    return forward


def _plan_batch_norm_trick(module: nn.Module):
    """(plan, why_not): plan maps (training, rank) to eps (None: read self.eps at each call)
    where the module's forward is the batch_norm trick; why_not maps "train"/"eval" to the
    reason where it is not, for any rank."""
    plan, why_not = {}, {}
    modes = {m: m.training for m in module.modules()}
    try:
        for training in (True, False):
            module.train(training)
            reasons = []
            for rank in _PROBE_SPATIAL:
                eps, reason = _probe_batch_norm_trick(module, rank)
                if eps is None:
                    reasons.append(reason)
                else:
                    plan[(training, rank)] = None if getattr(module, "eps", None) == eps else eps
            if not any(key[0] == training for key in plan):  # the reason of a forward that ran
                ran = [r for r in reasons if not r.startswith("its forward fails")]
                why_not["train" if training else "eval"] = (ran or reasons)[0]
    finally:
        for m, training in modes.items():
            m.training = training
    return plan, why_not


def _apply_batch_norm_trick(module: nn.Module, plan: dict, backend: str) -> None:
    forward = _batch_norm_trick_forward(type(module).forward)
    _install(module, forward,
             f"batch_norm trick -> adain_affine, (training, rank): eps {plan}",
             adain_batch_norm_plan=plan, adain_backend=backend, adain_channels=_channels(module),
             **{_ACTIVATED_FORWARD: forward})


def _is_batch_norm_trick_candidate(module: nn.Module) -> bool:
    """A leaf with a running_mean buffer and weight/bias assigned per call: worth a probe."""
    return (_assigned_affine(module) and not list(module.children())
            and isinstance(getattr(module, "running_mean", None), torch.Tensor))


# ----- adain_ext's own modules on a reference path ---------------------------------------------

def _find_reference_path(module: StyleModulation | adain_nn.AdaIN) -> bool:
    """StyleModulation with an unfused impl, or nn.AdaIN(backend="reference")."""
    if isinstance(module, StyleModulation):
        return module.impl not in FUSED
    return module.backend == "reference"


def _apply_reference_path(module: StyleModulation | adain_nn.AdaIN, backend: str) -> None:
    if isinstance(module, StyleModulation):
        module.impl = "fused" if backend == "auto" else backend
    else:
        module.backend = backend


# ----- The planner: each module, children first, to the idioms --------------------------------

@dataclass
class _Pass:
    """One find_fusable() or accelerate() pass over a model."""

    backend: str
    apply: bool
    references: dict  # function -> the fused function taking its place
    extra: tuple  # the user's copies of reference functions: fx keeps them calls
    names: dict  # module -> qualified name
    findings: list = field(default_factory=list)
    opaque: set = field(default_factory=set)  # ids of modules done: later traces keep them calls
    # ids of rewritten modules whose output is a fused call that can take an activation
    activatable: set = field(default_factory=set)
    # ids of rewritten modules whose first input goes straight into a fused norm (a prologue)
    prologue_ready: set = field(default_factory=set)
    fold_activations: bool = True

    def left_alone(self, name: str, entries) -> None:
        for node, what, reason in entries:
            if _owner(node, "") == "":  # norms inlined from user-defined children report there
                self.findings.append(Finding(name, "left_alone", what, reason))


def _reference_table(reference_functions: Mapping | None) -> dict:
    references = dict(_REFERENCE_TO_FUSED)
    for fn, ref in (reference_functions or {}).items():
        if ref not in _REFERENCE_TO_FUSED:
            known = [f.__name__ for f in _REFERENCE_TO_FUSED]
            raise ValueError(f"reference_functions maps {fn!r} to {ref!r}, which is not one of the "
                             f"adain_ext.reference functions {known}")
        references[fn] = _REFERENCE_TO_FUSED[ref]
    return references


def _visit_reference_path(run: _Pass, module: nn.Module, name: str) -> None:
    if _find_reference_path(module):
        run.findings.append(Finding(name, "reference_backend", type(module).__name__))
        if run.apply:
            _apply_reference_path(module, run.backend)
    run.opaque.add(id(module))


def _visit_batch_norm_trick(run: _Pass, module: nn.Module, name: str) -> bool:
    """Probes the module; True when its forward is the batch_norm trick in some mode."""
    plan, why_not = _plan_batch_norm_trick(module)
    what = f"F.batch_norm over x.view(1, N*C, ...) ({type(module).__name__})"
    for mode, reason in why_not.items():
        run.findings.append(Finding(name, "left_alone", f"{what} in {mode} mode", reason))
    if not plan:
        return False
    ranks = sorted({rank for _, rank in plan})
    modes = sorted({"train" if t else "eval" for t, _ in plan}, reverse=True)
    run.findings.append(Finding(name, "batch_norm_adain", (
        f"{what} -> adain_affine(x, mean=bias.view(N, C), std=weight.view(N, C), "
        f"unbiased=False), {'/'.join(modes)} mode, ranks {ranks}")))
    if run.apply:
        _apply_batch_norm_trick(module, plan, run.backend)
    run.opaque.add(id(module))
    run.activatable.add(id(module))
    return True


def _visit_traced(run: _Pass, module: nn.Module, name: str) -> bool:
    """The graph idioms of the module's forward, read shallow (its own code), then, if that finds
    nothing, deep (its user-defined children inlined); the rewritten graph installed when it is
    the same in train and eval mode. False when torch.fx traces it neither way."""
    traced_left = None  # the norms left alone in the deepest trace that worked
    for deep in (False, True):
        graph = _trace(module, deep, run.opaque, run.extra)
        if graph is None:
            continue
        found, traced_left, consumed = _rewrite_graph(
            module, graph, run.backend, run.references,
            run.activatable if run.fold_activations else None, run.apply, run.prologue_ready)
        if not found:
            continue
        same = _same_in_train_and_eval(module, deep, run.opaque, run.extra)
        if not same:
            why = "its traced code differs between train() and eval() (a branch on self.training)"
            run.findings.extend(Finding(name, "left_alone", detail, why)
                                for _, detail, owner in found if not owner)
        else:  # the inlined children's own reports of the norms rewritten here are stale
            stale = {(f"{name}.{owner}" if name else owner, what) for owner, what in consumed}
            run.findings[:] = [f for f in run.findings
                               if f.rewritten or (f.module, f.detail) not in stale]
            run.findings.extend(Finding(name, pattern, detail) for pattern, detail, _ in found)
        run.left_alone(name, traced_left)
        if same:
            graph.lint()
            activated = _activated_forward(module, graph)
            if activated is not None:
                run.activatable.add(id(module))
            with_prologue = _prologue_forward(module, graph) if run.fold_activations else None
            if with_prologue is not None:
                run.prologue_ready.add(id(module))
            if run.apply:
                generated = fx.GraphModule(module, graph)
                _install(module, type(generated).forward, generated.code,
                         **({_ACTIVATED_FORWARD: activated} if activated else {}),
                         **({_PROLOGUE_FORWARD: with_prologue} if with_prologue else {}))
            run.opaque.add(id(module))
        return True
    if traced_left is not None:
        run.left_alone(name, traced_left)
    return traced_left is not None


def _visit_untraceable(run: _Pass, module: nn.Module, name: str) -> None:
    """Reports a forward fx cannot read when it holds or calls a norm."""
    if (any(isinstance(c, _INSTANCE_NORM) for c in module.children())
            or _calls(module, "batch_norm") or _calls(module, "instance_norm")):
        run.findings.append(Finding(name, "left_alone", f"forward of {type(module).__name__}",
                                    _trace_error(module, run.opaque, run.extra)))


def _children_first(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        yield from _children_first(child)
    yield module


def _plan(model: nn.Module, backend: str, reference_functions: Mapping | None, apply: bool,
          fold_activations: bool = True):
    run = _Pass(backend, apply, _reference_table(reference_functions),
                tuple(reference_functions or ()),
                {m: name for name, m in model.named_modules(remove_duplicate=False)},
                fold_activations=fold_activations)
    for module in _children_first(model):
        name = run.names.get(module, "")
        if isinstance(module, (StyleModulation, adain_nn.AdaIN)):
            _visit_reference_path(run, module, name)
        elif (type(module).__module__.startswith("torch.nn") or id(module) in run.opaque
                or hasattr(module, "adain_fused_code")):
            continue  # built-ins (containers included) have nothing of their own; done already
        elif _is_batch_norm_trick_candidate(module):
            if not _visit_batch_norm_trick(run, module, name):
                _visit_traced(run, module, name)
        elif not _visit_traced(run, module, name):
            _visit_untraceable(run, module, name)
    return run.findings


def find_fusable(model: nn.Module, *, reference_functions: Mapping | None = None,
                 fold_activations: bool = True) -> list[Finding]:
    """What accelerate(model) would rewrite, and every instance norm (or activation) it would
    leave alone with the reason (`Finding.reason`), without changing the model."""
    return _plan(model, "auto", reference_functions, apply=False,
                 fold_activations=fold_activations)


def accelerate(model: nn.Module, *, backend: str = "auto",
               reference_functions: Mapping[Callable, Callable] | None = None,
               fold_activations: bool = True) -> nn.Module:
    """Puts the fused op in place of unfused AdaIN code in an existing model; returns the model
    (the same object, changed in place). `backend` is the fused op's; `reference_functions` maps
    your own copies of the reference functions to the adain_ext.reference function each equals;
    `fold_activations=False` keeps the ReLU/LeakyReLU after an AdaIN a separate pass instead of
    the op's epilogue.

    docs/accelerate.md says which idioms are recognised, what is left alone and why, and what a
    rewritten module keeps.
    """
    if backend not in functional.BACKENDS:
        raise ValueError(f"backend must be one of {functional.BACKENDS}, got {backend!r}")
    _plan(model, backend, reference_functions, apply=True, fold_activations=fold_activations)
    return model
