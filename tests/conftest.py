import os
import sys

# The Triton kernels run on CPU tensors through the interpreter; it must be set before triton
# kernels are imported, so before any test module loads adain_ext.triton.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))
