import os
import sys

import torch

# Without a GPU the Triton kernels run on CPU tensors through the interpreter, which must be
# switched on before any triton kernel is imported (so before adain_ext.triton loads).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))
