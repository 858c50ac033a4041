"""What Python registers for the compiled adain:: ops (csrc/): their fake kernels
(adain_ext/fakes.py) and their vmap rule (adain_ext/_vmap.py). Their autograd is C++
(csrc/autograd.cpp); the public adain::fused and adain::affine are C++ compositions of the
internal ops, traced through, so they need no fake of their own.

Imported only when adain_ext._C loaded (the ops must exist to register against them).
"""
import torch

from adain_ext import fakes
from adain_ext._vmap import fold_batch_into_n

for _name, _fake in fakes.BY_OP.items():
    torch.library.register_fake(f"adain::{_name}", _fake)

for _name in ("fused", "affine", *fakes.BY_OP):
    torch.library.register_vmap(
        f"adain::{_name}", fold_batch_into_n(getattr(torch.ops.adain, _name).default,
                                             fakes.PER_CHANNEL_ARGS.get(_name, ())))
