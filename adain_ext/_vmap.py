"""The batching rule of every op (torch.vmap): the vmapped dimension folds into N.

Every op works per (n, c) row, so vmapping over a batch of B calls is one call on B * N rows: each
tensor argument gets the batch dimension in front (an unbatched one is expanded: the same tensor
for every call), (B, N, ...) becomes (B * N, ...), and every result (B * N, ...) goes back to
(B, N, ...). Registered for the compiled ops (adain_ext/cpp_ops.py) and the Triton ops
(adain_ext/triton/_common.py), forward and backward ops alike, so vmap composes with grad.
"""
from __future__ import annotations

import torch


def fold_batch_into_n(op, per_channel: tuple[int, ...] = ()):
    """The vmap rule of `op` for torch.library.register_vmap. The arguments at the positions
    `per_channel` (the prologue's noise_weight and bias: one value per channel, shared by every
    (n, c) row of a channel) are passed as they are; vmapping over them is refused."""

    def rule(info, in_dims, *args):
        batch = info.batch_size
        n = next(a.shape[1 if d is not None else 0] for a, d in zip(args, in_dims)
                 if isinstance(a, torch.Tensor) and a.dim() > 1)
        folded = []
        for i, (arg, dim) in enumerate(zip(args, in_dims)):
            if i in per_channel:
                if dim is not None:
                    raise NotImplementedError(
                        "adain: vmap over noise_weight or bias (one value per channel) is not "
                        "supported; vmap over x, noise and the statistics is")
            elif isinstance(arg, torch.Tensor):
                arg = arg.movedim(dim, 0) if dim is not None else arg.expand(batch, *arg.shape)
                arg = arg.reshape(batch * n, *arg.shape[2:])
            folded.append(arg)
        out = op(*folded)

        def unfold(t):
            return t.reshape(batch, n, *t.shape[1:])

        if isinstance(out, torch.Tensor):
            return unfold(out), 0
        return tuple(unfold(t) for t in out), tuple(0 for _ in out)

    return rule
