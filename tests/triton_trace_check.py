"""Traces torch.compile(fullgraph=True) through the adain_triton ops as a GPU would, without one.

    python tests/triton_trace_check.py

Under the interpreter the ops are opaque custom ops (see adain_ext/triton/_common.py); on a GPU
they are triton_ops that AOTAutograd decomposes into their Triton kernel calls. This script
registers them the GPU way (no TRITON_INTERPRET), points Triton at a stand-in driver that only
names a sm_90 target (what torch's kernel-mutation analysis asks for), and compiles forward and
backward of every op (static and dynamic=True shapes) with a backend that records the graphs and
never launches a kernel. It checks that each graph calls Triton kernels and no adain_triton op is
left opaque. Exit 1 on failure.
"""
import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import triton
from torch._functorch.aot_autograd import aot_module_simplified
from triton.backends.compiler import GPUTarget


class _TargetOnlyDriver:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(_TargetOnlyDriver())

import adain_ext.triton as T

assert not T.INTERPRET, "run without TRITON_INTERPRET"


def _hint(size) -> int:
    return int(size.node.hint) if isinstance(size, torch.SymInt) else int(size)


def _recording_backend(graphs):
    def compiler(gm, _inputs):
        graphs.append(gm)
        outputs = gm.graph.find_nodes(op="output")[0].args[0]

        def zeros_like_traced(value):
            size = [_hint(d) for d in value.shape]  # dynamic=True: sizes are SymInts
            stride = [_hint(d) for d in value.stride()]
            return torch.empty_strided(size, stride, dtype=value.dtype).zero_()

        def stand_in(node):
            value = getattr(node, "meta", {}).get("val")
            if isinstance(value, torch.Tensor):
                return zeros_like_traced(value)
            if isinstance(value, (int, torch.SymInt)):  # sizes saved for a dynamic backward
                return _hint(value)
            return None

        def run(*_args):  # never launches a kernel: zeros of the traced shapes and strides
            return [stand_in(n) for n in outputs]
        return run

    def backend(gm, inputs):
        return aot_module_simplified(gm, inputs, fw_compiler=compiler, bw_compiler=compiler)
    return backend


FUNCTIONS = {
    "adain": lambda c, s, m, sd: T.adain(c, s, 0.7).sum(),
    "adain_affine": lambda c, s, m, sd: T.adain_affine(c, m, sd).sum(),
    "mean_std": lambda c, s, m, sd: sum(T.mean_std(s)).sum(),
    # The prologue op: noise broadcast over channels, its weight and a bias from the statistics'
    # tensors (gradients reach them too), LeakyReLU before and ReLU after.
    "adain_affine_prologue": lambda c, s, m, sd: T.adain_affine(
        c, m, sd, activation="relu", noise=s[:, :1, :4, :4].repeat(1, 1, 2, 2),
        noise_weight=m[0], bias=sd[1], pre_activation="leaky_relu", pre_negative_slope=0.2).sum(),
    "all": lambda c, s, m, sd: (T.adain(c, s) + T.adain_affine(c, m, sd)
                                + sum(T.mean_std(c))).sum(),
}


def main() -> int:
    failed = 0
    for dynamic, layout, (name, fn) in itertools.product(
            (False, True), (torch.contiguous_format, torch.channels_last), FUNCTIONS.items()):
        content = torch.randn(2, 4, 8, 8).contiguous(memory_format=layout).requires_grad_()
        style = torch.randn(2, 4, 5, 7).requires_grad_()
        mean, std = torch.randn(2, 4).requires_grad_(), (torch.rand(2, 4) + 0.5).requires_grad_()
        graphs = []
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend=_recording_backend(graphs), fullgraph=True,
                                 dynamic=dynamic)
        label = (f"{name} {'channels_last' if layout == torch.channels_last else 'contiguous'}"
                 f"{' dynamic' if dynamic else ''}")
        try:
            compiled(content, style, mean, std).backward()
            assert len(graphs) == 2, f"expected a forward and a backward graph, got {len(graphs)}"
            for kind, graph in zip(("forward", "backward"), graphs):
                targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
                kernels = sum("triton_kernel_wrapper" in t for t in targets)
                opaque = [t for t in targets if "adain_triton" in t]
                assert kernels > 0 and not opaque, f"{kind}: {kernels} kernels, opaque {opaque}"
                print(f"ok   {label} {kind}: {kernels} Triton kernel calls, {len(targets)} nodes")
        except Exception as error:  # noqa: BLE001  (report every failing function)
            failed += 1
            print(f"FAIL {label}: {type(error).__name__}: {str(error)[:3000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
