import os
import sys

import torch

# Without a GPU the Triton kernels run on CPU tensors through the interpreter, which must be
# switched on before any triton kernel is imported (so before adain_ext.triton loads).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU, one Triton config per kernel: autotuning the suite's ~270 keys would take minutes.
# test_triton.py's autotune test turns it on for itself.
os.environ.setdefault("ADAIN_EXT_TRITON_AUTOTUNE", "0")
sys.path.insert(0, os.path.dirname(__file__))
