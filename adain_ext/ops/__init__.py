"""Fake kernels of the compiled `adain` ops, one file per op (their autograd is C++:
csrc/autograd.cpp), and their vmap rule (adain_ext/_vmap.py).

Imported only when adain_ext._C loaded (the ops must exist to register against them).
"""
import torch

from adain_ext._vmap import fold_batch_into_n
from adain_ext.ops import affine, fused, mean_std  # noqa: F401

for _name in ("mean_std", "fused", "affine", "_affine_forward", "_fused_forward",
              "_mean_std_backward", "_affine_backward", "_fused_backward"):
    torch.library.register_vmap(f"adain::{_name}",
                                fold_batch_into_n(getattr(torch.ops.adain, _name).default))
