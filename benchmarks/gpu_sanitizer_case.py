"""A small run of every CUDA kernel path, forward and backward, for compute-sanitizer
(memcheck, racecheck): benchmarks/gpu_check.sh runs it under each tool.

Shapes (see csrc/cuda/row_kernels.cuh): packed tiny rows, rows off the 16-byte grid, one block
per row with the row cached in shared memory, split long rows (fewer rows than SMs), a style that
is split while the content is not, channels_last with C a multiple of the vector width and not.

    python benchmarks/gpu_sanitizer_case.py [device]    # cuda (default); cpu: a smoke test
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import adain_ext  # noqa: E402

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"

SHAPES = [
    ((4, 64, 4, 4), None, "contiguous"),
    ((2, 30, 7, 9), None, "contiguous"),
    ((2, 300, 32, 32), None, "contiguous"),
    ((1, 2, 128, 130), None, "contiguous"),
    ((2, 4, 8, 8), (2, 4, 160, 160), "contiguous"),
    ((2, 16, 12, 12), None, "channels_last"),
    ((1, 5, 33, 17), None, "channels_last"),
]

for content_shape, style_shape, layout in SHAPES:
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        content = torch.randn(content_shape, device=DEVICE, dtype=dtype).contiguous(
            memory_format=fmt
        )
        style = torch.randn(style_shape or content_shape, device=DEVICE, dtype=dtype)
        style = style.contiguous(memory_format=fmt)
        content.requires_grad_(True)
        style.requires_grad_(True)
        out = adain_ext.adain(content, style, 0.7, backend="cpp")
        out.backward(torch.randn_like(out))
        mean = torch.randn(content_shape[:2], device=DEVICE, requires_grad=True)
        std = torch.rand(content_shape[:2], device=DEVICE).add(0.5).requires_grad_(True)
        adain_ext.adain_affine(content, mean, std, backend="cpp").sum().backward()
        m, s = adain_ext.mean_std(content, backend="cpp")
        (m.sum() + s.sum()).backward()
if DEVICE == "cuda":
    torch.cuda.synchronize()
print(f"gpu_sanitizer_case: ok ({DEVICE})")
