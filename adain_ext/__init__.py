"""adain_ext: fused AdaIN (adaptive instance normalization) ops for PyTorch.

    import adain_ext
    out = adain_ext.adain(content, style)              # == torch.ops.adain.fused(content, style)
    mean, std = adain_ext.mean_std(features)           # the reference's calc_mean_std
    out = adain_ext.adain_affine(x, style_mean, style_std)

See README.md for the backends and their semantics.
"""
from adain_ext import _extension, reference  # noqa: F401  (adain_ext._extension for callers)
from adain_ext._extension import HAS_CPP
from adain_ext.env import package_version as _package_version
from adain_ext.functional import BACKENDS, adain, adain_affine, mean_std, resolve_backend

if HAS_CPP:
    from adain_ext import cpp_ops as _cpp_ops  # noqa: F401  (fake kernels and vmap rules)

from adain_ext import nn  # noqa: E402

__version__ = _package_version()  # pyproject.toml holds the one definition
__all__ = ["BACKENDS", "HAS_CPP", "adain", "adain_affine", "mean_std", "nn", "reference",
           "resolve_backend"]
