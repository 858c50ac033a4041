"""Bad input gets a clear error naming the problem, from every backend on every device it serves
(the targets of the backend registry: C++ and Triton on CPU and CUDA, and the reference) and from
torch.ops."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from cases import Target, targets

import adain_ext
from adain_ext import reference

TARGETS = targets(with_reference=True)

good = torch.randn(2, 3, 4, 4)


def _on(device, kwargs):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _bad_adain_calls():
    """(description, kwargs for adain, expected error, message fragment)."""
    return [
        ("rank", dict(content=torch.randn(3, 4), style=good), ValueError,
         "content must be a (N, C, *) tensor with at least 3 dims, got 2-D"),
        ("style rank", dict(content=good, style=torch.randn(2, 3)), ValueError,
         "style must be a (N, C, *) tensor"),
        ("N/C mismatch", dict(content=good, style=torch.randn(2, 5, 4, 4)), ValueError,
         "style must have the same N and C as content (got 2x3 and 2x5)"),
        ("integer", dict(content=good.long(), style=good.long()), TypeError,
         "content must be float16, bfloat16, float32 or float64"),
        ("bool", dict(content=good > 0, style=good > 0), TypeError,
         "content must be float16, bfloat16, float32 or float64"),
        ("complex", dict(content=good.to(torch.complex64), style=good.to(torch.complex64)),
         TypeError, "content must be float16, bfloat16, float32 or float64"),
        ("dtype mismatch", dict(content=good, style=good.double()), TypeError,
         "must match content dtype"),
        ("L < 2", dict(content=torch.randn(2, 3, 1, 1), style=good), ValueError,
         "content has L = 1 element per (n, c) row"),
        ("L < 2, 3-D", dict(content=torch.randn(2, 3, 1), style=good), ValueError,
         "unbiased variance needs L >= 2"),
        ("style L < 2, 5-D", dict(content=good, style=torch.randn(2, 3, 1, 1, 1)), ValueError,
         "style has L = 1 element per (n, c) row"),
        ("L = 0", dict(content=torch.randn(2, 3, 0, 4), style=good, unbiased=False), ValueError,
         "content has L = 0 elements per (n, c) row"),
        ("L = 0, 5-D", dict(content=torch.randn(2, 3, 2, 0, 2), style=good, unbiased=False),
         ValueError, "content has L = 0 elements"),
        ("negative eps", dict(content=good, style=good, eps=-1.0), ValueError,
         "eps must be >= 0 and finite, got -1"),
        ("NaN eps", dict(content=good, style=good, eps=float("nan")), ValueError,
         "eps must be >= 0 and finite, got nan"),
        ("Inf eps", dict(content=good, style=good, eps=float("inf")), ValueError,
         "eps must be >= 0 and finite, got inf"),
        ("NaN alpha", dict(content=good, style=good, alpha=float("nan")), ValueError,
         "alpha must be a finite number, got nan"),
        ("-Inf alpha", dict(content=good, style=good, alpha=-float("inf")), ValueError,
         "alpha must be a finite number, got -inf"),
        ("alpha tensor that requires grad",
         dict(content=good, style=good, alpha=torch.tensor(0.5, requires_grad=True)), TypeError,
         "alpha is a tensor that requires grad"),
    ]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("call", _bad_adain_calls(), ids=lambda c: c[0])
def test_adain_rejects_bad_input(call, target: Target):
    _, kwargs, error, fragment = call
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        adain_ext.adain(**_on(target.device, kwargs), backend=target.backend)


@pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")
@pytest.mark.parametrize("call", _bad_adain_calls(), ids=lambda c: c[0])
def test_torch_ops_fused_rejects_bad_input(call):
    _, kwargs, error, fragment = call
    alpha = kwargs.get("alpha", 1.0)
    if isinstance(alpha, torch.Tensor):
        pytest.skip("the op's schema takes alpha as a float: a tensor is the function API's case")
    args = (kwargs["content"], kwargs["style"], alpha, kwargs.get("eps", 1e-5), kwargs.get("unbiased", True))
    with pytest.raises(error, match="adain: "):
        torch.ops.adain.fused(*args)


@pytest.mark.parametrize("target", TARGETS)
def test_h_times_w_of_one_is_fine_with_biased_statistics(target: Target):
    # One value per row: x - mean_x is 0, so the output is the style's mean, i.e. the style itself.
    gen = torch.Generator().manual_seed(0)
    content, style = (torch.randn(2, 3, 1, 1, generator=gen).to(target.device) for _ in range(2))
    out = adain_ext.adain(content, style, unbiased=False, backend=target.backend)
    torch.testing.assert_close(out, style)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "stat_shapes,fragment",
    [(((2, 3, 2), (2, 3)), "mean must have shape (N, C) or (N, C, 1, ...) = (2, 3), got [2, 3, 2]"),
     (((2, 3), (3, 2)), "std must have shape (N, C) or (N, C, 1, ...) = (2, 3), got [3, 2]"),
     (((2, 3), (2, 3, 1, 2)), "std must have shape (N, C) or (N, C, 1, ...)"),
     (((3,), (2, 3)), "mean must have shape"),
     (((1, 3), (2, 3)), "mean must have shape")],
)
def test_affine_rejects_statistics_of_the_wrong_shape(stat_shapes, fragment, target: Target):
    mean, std = ((torch.rand(s) + 0.5).to(target.device) for s in stat_shapes)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        adain_ext.adain_affine(good.to(target.device), mean, std, backend=target.backend)


@pytest.mark.parametrize("target", TARGETS)
def test_affine_rejects_integer_statistics(target: Target):
    x, mean, std = (t.to(target.device) for t in (good, torch.zeros(2, 3, dtype=torch.long),
                                                  torch.ones(2, 3)))
    with pytest.raises(TypeError, match="mean must be float16"):
        adain_ext.adain_affine(x, mean, std, backend=target.backend)


@pytest.mark.parametrize("target", TARGETS)
def test_mean_std_rejects_bad_input(target: Target):
    def mean_std(x, **kw):
        return adain_ext.mean_std(x.to(target.device), **kw, backend=target.backend)

    with pytest.raises(ValueError, match=r"x must be a \(N, C, \*\) tensor with at least 3 dims"):
        mean_std(torch.randn(4, 4))
    with pytest.raises(ValueError, match="unbiased variance needs L >= 2"):
        mean_std(torch.randn(1, 2, 1, 1))
    with pytest.raises(ValueError, match="unbiased variance needs L >= 2"):
        mean_std(torch.randn(1, 2, 1))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        mean_std(good, eps=-1.0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("stat_shape", [(2, 3), (2, 3, 1), (2, 3, 1, 1), (2, 3, 1, 1, 1)], ids=str)
def test_affine_takes_statistics_with_any_number_of_trailing_ones(stat_shape, target: Target):
    mean, std = torch.randn(stat_shape), torch.rand(stat_shape) + 0.5
    want = reference.adain_affine(good, mean.reshape(2, 3), std.reshape(2, 3))
    x, mean, std = (t.to(target.device) for t in (good, mean, std))
    got = adain_ext.adain_affine(x, mean, std, backend=target.backend)
    torch.testing.assert_close(got.cpu(), want)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend must be one of"):
        adain_ext.adain(good, good, backend="cuda")


def _run_fresh_python(script: str) -> subprocess.CompletedProcess:
    """script in a new interpreter that imports this checkout's adain_ext (or, where the tests run
    from a copy beside an installed package, the installed one); it must exit 0."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=root, env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_import_without_the_extension_warns_and_falls_back(tmp_path):
    """A missing compiler at install time never breaks users: import works, warns once, and
    backend='auto' runs the reference."""
    script = (
        "import sys, warnings\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'adain_ext._C': raise ImportError('simulated: not built')\n"
        "sys.meta_path.insert(0, Block())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, adain_ext\n"
        "assert not adain_ext.HAS_CPP\n"
        "assert sum('falls back to the pure-PyTorch reference' in str(w.message) for w in caught) == 1\n"
        "x = torch.randn(2, 3, 5, 5)\n"
        "assert adain_ext.resolve_backend('auto', x.device) == 'reference'\n"
        "torch.testing.assert_close(adain_ext.adain(x, x * 2 + 1), adain_ext.reference.adain(x, x * 2 + 1))\n"
        "try:\n"
        "    adain_ext.adain(x, x, backend='cpp')\n"
        "except RuntimeError as e:\n"
        "    assert 'simulated: not built' in str(e)\n"
        "else:\n"
        "    raise AssertionError('backend=cpp should fail without the extension')\n"
        "print('ok')\n"
    )
    result = _run_fresh_python(script)
    assert result.stdout.strip() == "ok"


def test_import_on_a_torch_older_than_supported_names_the_version():
    """An unsupported torch fails at import with the version needed, not deep inside an op."""
    script = (
        "import torch\n"
        "torch.__version__ = '2.10.0+cu128'\n"
        "try:\n"
        "    import adain_ext\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    print('imported')\n"
    )
    result = _run_fresh_python(script)
    assert result.stdout.strip() == ("adain_ext needs torch >= 2.11, found torch 2.10.0+cu128: "
                                     "pip install 'torch>=2.11'")
