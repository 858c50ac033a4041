"""Every backend against the one float64 oracle (adain_ext/reference.py), over the shared cases of
cases.py in every dtype: the outputs and layouts of adain, mean_std and adain_affine, and every
gradient. Backends: the compiled ops on CPU ("cpp"), the pure-PyTorch "reference" backend, and
Triton ("triton": on the GPU when there is one, else on CPU tensors through the interpreter,
which tests/conftest.py switches on). The CUDA kernels run these checks in test_cuda.py.
"""
from __future__ import annotations

import re

import pytest
import torch
from cases import (
    CASE_DTYPES,
    TOLERANCES,
    Case,
    assert_close,
    assert_grads_close,
    assert_layout_like,
    double_leaves,
    make_inputs,
    make_statistics,
)

import adain_ext
from adain_ext import backends, reference


def _backend_params():
    """Every backend of the registry, on the first device type it serves that this machine has
    (so the compiled ops run on CPU here: the CUDA kernels have test_cuda.py), skipped with the
    registry's reason where it cannot run there."""
    params = []
    for backend in backends.REGISTRY.values():
        device = next((d for d in backend.devices if d in backends.present_device_types()), None)
        why = (backend.why_unavailable(device) if device is not None
               else f"it serves {', '.join(backend.devices)} tensors; none here")
        marks = [pytest.mark.skip(reason=f"{backend.name}: {why}")] if why else []
        ident = f"{backend.name}-{device}"
        params.append(pytest.param(backend.name, device, id=ident, marks=marks))
    return params


BACKENDS = _backend_params()


def _backend_case_dtypes():
    """Every backend with every (case, dtype) pair, except the reference backend in float64: that
    is the oracle itself, and comparing it with itself cannot fail."""
    return [
        pytest.param(b.values[0], b.values[1], *cd.values, id=f"{cd.id}-{b.id}",
                     marks=list(b.marks) + list(cd.marks))
        for b in BACKENDS
        for cd in CASE_DTYPES
        if not (b.values[0] == "reference" and cd.values[1] == torch.float64)
    ]


BACKEND_CASE_DTYPES = _backend_case_dtypes()


def _check_layout(out, like, backend):
    if backend == "reference":  # follows PyTorch's own stride propagation
        assert out.shape == like.shape and out.dtype == like.dtype
    else:
        assert_layout_like(out, like)


def _grad_out(shape, dtype, device, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


# ---- Outputs.


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_adain_matches_reference(case: Case, dtype, backend, device):
    content, style = make_inputs(case, dtype, device)
    out = adain_ext.adain(content, style, case.alpha, unbiased=case.unbiased, backend=backend)
    expected = reference.adain(content.double(), style.double(), case.alpha, unbiased=case.unbiased)
    _check_layout(out, content, backend)
    assert_close(out, expected, dtype, case=case)


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_mean_std_matches_reference(case: Case, dtype, backend, device):
    content, _ = make_inputs(case, dtype, device)
    mean, std = adain_ext.mean_std(content, unbiased=case.unbiased, backend=backend)
    ref_mean, ref_std = reference.mean_std(content.double(), unbiased=case.unbiased)
    N, C = case.content[:2]
    for got, want in ((mean, ref_mean), (std, ref_std)):
        assert got.shape == (N, C, *([1] * (len(case.content) - 2)))  # broadcasts against x
        assert got.dtype == dtype and got.is_contiguous()
        assert_close(got, want, dtype, case=case)


@pytest.mark.parametrize("flat", [False, True], ids=["NC11", "NC"])
@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_affine_matches_reference(case: Case, dtype, backend, device, flat):
    x, _ = make_inputs(case, dtype, device)
    mean, std = make_statistics(case, torch.float32, device, flat=flat)  # another dtype than x
    out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, backend=backend)
    expected = reference.adain_affine(x.double(), mean.double(), std.double(),
                                      unbiased=case.unbiased)
    _check_layout(out, x, backend)
    assert_close(out, expected, dtype, case=case)


# ---- Every gradient.


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_adain_gradients(case: Case, dtype, backend, device):
    content, style = make_inputs(case, dtype, device, requires_grad=True)
    out = adain_ext.adain(content, style, case.alpha, unbiased=case.unbiased, backend=backend)
    grad_out = _grad_out(out.shape, dtype, device, 3)
    got = torch.autograd.grad(out, (content, style), grad_out)
    c64, s64 = double_leaves(content, style)
    ref = reference.adain(c64, s64, case.alpha, unbiased=case.unbiased)
    want = torch.autograd.grad(ref, (c64, s64), grad_out.double())
    assert_grads_close(got, want, dtype, case)
    for grad, leaf in zip(got, (content, style), strict=True):
        _check_layout(grad, leaf, backend)


@pytest.mark.parametrize("flat", [False, True], ids=["NC11", "NC"])
@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_affine_gradients(case: Case, dtype, backend, device, flat):
    x, _ = make_inputs(case, dtype, device, requires_grad=True)
    mean, std = make_statistics(case, dtype, device, requires_grad=True, flat=flat)
    out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, backend=backend)
    grad_out = _grad_out(out.shape, dtype, device, 4)
    got = torch.autograd.grad(out, (x, mean, std), grad_out)
    x64, m64, s64 = double_leaves(x, mean, std)
    ref = reference.adain_affine(x64, m64, s64, unbiased=case.unbiased)
    want = torch.autograd.grad(ref, (x64, m64, s64), grad_out.double())
    assert_grads_close(got, want, dtype, case)


@pytest.mark.parametrize("backend,device,case,dtype", BACKEND_CASE_DTYPES)
def test_mean_std_gradients(case: Case, dtype, backend, device):
    x, _ = make_inputs(case, dtype, device, requires_grad=True)
    mean, std = adain_ext.mean_std(x, unbiased=case.unbiased, backend=backend)
    gm, gs = _grad_out(mean.shape, dtype, device, 5), _grad_out(std.shape, dtype, device, 6)
    (got,) = torch.autograd.grad((mean, std), (x,), (gm, gs))
    (x64,) = double_leaves(x)
    rm, rs = reference.mean_std(x64, unbiased=case.unbiased)
    want = torch.autograd.grad((rm, rs), (x64,), (gm.double(), gs.double()))
    assert_grads_close((got,), want, dtype, case)
    # Only one output used: the other's gradient arrives as None.
    (got_std,) = torch.autograd.grad(
        adain_ext.mean_std(x, unbiased=case.unbiased, backend=backend)[1].sum(), x)
    (want_std,) = torch.autograd.grad(reference.mean_std(x64, unbiased=case.unbiased)[1].sum(), x64)
    assert_grads_close((got_std,), (want_std,), dtype, case)


# ---- The registry (adain_ext/backends.py) says what each backend serves, truthfully.


@pytest.mark.parametrize("name", backends.NAMES)
def test_registry_devices_are_the_ones_a_backend_runs_on(name):
    """On every device type here: a backend that the registry calls available runs the three ops
    there and matches the reference; a device type outside its `devices` is unavailable, and
    resolve_backend refuses it with the registry's reason."""
    backend = backends.REGISTRY[name]
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    style = x.flip(-1) * 2 + 1
    for device_type in backends.present_device_types():
        why = backend.why_unavailable(device_type)
        if device_type not in backend.devices:
            assert why is not None, f"{name} says it serves {device_type}, but devices omit it"
        device = torch.device(device_type)
        if why is not None:
            with pytest.raises(RuntimeError, match=f"backend={name!r} is unavailable for "
                                                   f"{device_type} tensors: {re.escape(why)}"):
                adain_ext.resolve_backend(name, device)
            continue
        assert adain_ext.resolve_backend(name, device) == name
        c, s = x.to(device), style.to(device)
        assert_close(adain_ext.adain(c, s, 0.5, backend=name).cpu(),
                     reference.adain(x.double(), style.double(), 0.5), torch.float32)
        mean, std = adain_ext.mean_std(c, backend=name)
        want_mean, want_std = reference.mean_std(x.double())
        assert_close(mean.cpu(), want_mean, torch.float32)
        assert_close(std.cpu(), want_std, torch.float32)
        assert_close(adain_ext.adain_affine(c, mean, std, backend=name).cpu(), x.double(),
                     torch.float32)


def test_registry_is_the_one_list_of_backends():
    """adain_ext.BACKENDS, backend="auto", the style commands' --backend choices and the
    availability report all come from the registry."""
    assert adain_ext.BACKENDS == ("auto", *backends.REGISTRY)
    for device_type in backends.present_device_types():
        auto = adain_ext.resolve_backend("auto", torch.device(device_type))
        assert backends.REGISTRY[auto].auto
        assert backends.REGISTRY[auto].why_unavailable(device_type) is None
    from adain_ext.style_transfer import stylize, train, video

    for command in (stylize, train, video):
        (option,) = [a for a in command.build_parser()._actions if "--backend" in a.option_strings]
        assert tuple(option.choices) == adain_ext.BACKENDS, command.__name__
    rows = backends.availability()
    assert [row["name"] for row in rows] == list(backends.NAMES)
    for row in rows:
        assert row["devices"] == backends.REGISTRY[row["name"]].devices
        assert row["available"] == bool(row["usable_on"])
        assert (row["why"] is None) == (set(row["usable_on"]) == set(row["devices"])
                                         & set(backends.present_device_types()))
    assert next(r for r in rows if r["name"] == "reference")["available"]


# ---- Statistics of other dtypes than x (and than each other): each gradient in its own dtype.

# x dtype, mean dtype, std dtype, and which statistic gets a gradient of 1e5: one that fits its
# float32 but not float16, while the other statistic's gradient (about 300) fits float16. A
# gradient passed through the other statistic's dtype (or a 16-bit x's) on its way out overflows
# to inf, and one rounded to 16 bits on the way exceeds the float32 tolerance.
MIXED_STATISTIC_DTYPES = [
    (torch.float32, torch.float32, torch.float16, "mean"),
    (torch.float32, torch.float16, torch.float32, "std"),
    (torch.float16, torch.float32, torch.float32, "mean"),
    (torch.bfloat16, torch.float32, torch.float16, "mean"),
]


@pytest.mark.parametrize("x_dtype,mean_dtype,std_dtype,big", MIXED_STATISTIC_DTYPES,
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_affine_gradients_in_each_statistic_dtype(backend, device, x_dtype, mean_dtype,
                                                  std_dtype, big):
    if backend == "reference" and x_dtype in (torch.float16, torch.bfloat16):
        pytest.skip("the reference backend computes in x's 16-bit dtype (eager PyTorch): sums of "
                    "1e5 overflow float16 there; the kernels accumulate in float32")
    case = Case("mixed_statistic_dtypes", (2, 3, 32, 32), layout="channels_last")
    x, _ = make_inputs(case, x_dtype, device, requires_grad=True)
    mean64, std64 = make_statistics(case, torch.float64, device)
    mean = mean64.reshape(2, 3).to(mean_dtype).requires_grad_()  # (N, C) and (N, C, 1, 1)
    std = std64.to(std_dtype).requires_grad_()
    out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, backend=backend)
    assert out.dtype == x_dtype
    # grad_mean = sum(g), grad_std = sum(g * x_hat): a constant 100 makes the first 1e5 and
    # leaves the second alone (x_hat sums to 0); 100 * x_hat the reverse.
    x_mean, x_std = reference.mean_std(x.detach().double(), unbiased=case.unbiased)
    x_hat = (x.detach().double() - x_mean) / x_std
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grad_out = (10 * noise + (100 if big == "mean" else 100 * x_hat)).to(device, x_dtype)
    got = torch.autograd.grad(out, (x, mean, std), grad_out)
    leaves = double_leaves(x, mean, std)
    want = torch.autograd.grad(reference.adain_affine(*leaves, unbiased=case.unbiased), leaves,
                               grad_out.double())
    big_grad, small_grad = (want[1], want[2]) if big == "mean" else (want[2], want[1])
    f16_max = torch.finfo(torch.float16).max
    assert big_grad.abs().max() > 1.5 * f16_max and small_grad.abs().max() < f16_max / 20
    for g, w, leaf, name in zip(got, want, (x, mean, std), ("x", "mean", "std")):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype, name
        assert g.isfinite().all(), f"{name}: {g.dtype} gradient not finite"
        # Each gradient at the tolerance of the less precise of x's dtype and its own, atol
        # relative to its largest entry (x's: or to grad_out's, which a 16-bit x's gradient
        # rounds before the 100 offset cancels).
        loose = max((x_dtype, leaf.dtype), key=lambda d: torch.finfo(d).eps)
        atol, rtol = TOLERANCES[loose]
        scale = max(w.abs().max().item(), grad_out.abs().max().item() if name == "x" else 0.0)
        torch.testing.assert_close(g.double(), w.to(device), atol=atol * scale, rtol=rtol,
                                   msg=lambda m: f"{name} ({g.dtype}): {m}")


# ---- The registry's answers where a GPU is present (faked: torch.cuda.is_available() True, the
# extension built with or without CUDA kernels, Triton found, the interpreter off as on a GPU
# machine). A wrong answer there would make the GPU suite skip what it must run.


def _fake_gpu_machine(monkeypatch, cuda_kernels: bool):
    from adain_ext import _extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_extension, "HAS_CPP", True)
    monkeypatch.setattr(_extension, "KERNEL_DEVICE_TYPES",
                        frozenset({"cpu", "cuda"} if cuda_kernels else {"cpu"}))
    monkeypatch.setattr(backends, "_TRITON_FOUND", True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("cuda_kernels", [True, False], ids=["built_with_cuda", "cpu_only_build"])
def test_registry_answers_on_a_gpu_machine(monkeypatch, cuda_kernels):
    import cases

    _fake_gpu_machine(monkeypatch, cuda_kernels)
    assert backends.present_device_types() == ("cpu", "cuda")
    cpp, triton, ref = (backends.REGISTRY[n] for n in ("cpp", "triton", "reference"))
    cuda_why = None if cuda_kernels else "it was built without cuda kernels"
    assert (cpp.why_unavailable("cpu"), cpp.why_unavailable("cuda")) == (None, cuda_why)
    # Triton serves CUDA tensors without the interpreter; CPU tensors only with it.
    assert triton.why_unavailable("cuda") is None
    assert "TRITON_INTERPRET=1" in triton.why_unavailable("cpu")
    assert ref.why_unavailable("cpu") is None and ref.why_unavailable("cuda") is None
    # auto: the compiled kernels where built for the device type, else the reference (never
    # Triton, which auto does not pick).
    assert backends.auto_backend("cpu") == "cpp"
    assert backends.auto_backend("cuda") == ("cpp" if cuda_kernels else "reference")
    cuda = torch.device("cuda")
    assert adain_ext.resolve_backend("auto", cuda) == backends.auto_backend("cuda")
    assert adain_ext.resolve_backend("triton", cuda) == "triton"
    if not cuda_kernels:
        with pytest.raises(RuntimeError, match="backend='cpp' is unavailable for cuda tensors: "
                                               "it was built without cuda kernels"):
            adain_ext.resolve_backend("cpp", cuda)
    rows = {row["name"]: row for row in backends.availability()}
    assert rows["cpp"]["usable_on"] == (("cpu", "cuda") if cuda_kernels else ("cpu",))
    assert rows["cpp"]["why"] == (None if cuda_kernels else f"cuda: {cuda_why}")
    assert rows["triton"]["usable_on"] == ("cuda",) and rows["triton"]["available"]
    assert rows["triton"]["why"].startswith("cpu: the Triton kernels need a CUDA device")
    assert rows["reference"]["usable_on"] == ("cpu", "cuda") and rows["reference"]["why"] is None
    # What the GPU suite runs: the CUDA targets are not skipped where they can run; the backend
    # tests run Triton on CUDA (its first device type).
    skipped = {p.id for p in cases.targets(with_reference=True) if p.marks}
    assert skipped == ({"triton-cpu"} if cuda_kernels else {"triton-cpu", "cpp-cuda"})
    assert {p.id for p in _backend_params() if not p.marks} == {"cpp-cpu", "triton-cuda",
                                                                "reference-cpu"}
    assert cases.auto_is(cases.Target("cpp", "cuda")) == cuda_kernels
