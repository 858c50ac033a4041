"""The CUDA kernels' machine code, checked without a GPU.

CI compiles csrc/cuda for sm_80 and sm_90 but has no GPU to run it on. The bandwidth of these
kernels rests on properties of the code nvcc emits that a harmless-looking source change can lose
without any test failing elsewhere, so this reads the SASS and resource report of every kernel in
the built _C (cuobjdump: the CUDA toolkit's, or the copy triton ships) and checks them:

- every kernel that streams a tensor in 16-byte slots loads 16 bytes per instruction (LDG.E.128),
  and every kernel that writes the output stores 16 bytes per instruction (plain STG.E.128: nvcc
  13.0 split a Vec assignment into narrower stores, see store_vec16 in csrc/cuda/reduce.cuh);
- no kernel keeps an array in local memory, and no fp32/fp16/bf16 kernel spills more than a few
  registers (the 1024-thread launch bound leaves 64 registers; kUnroll and unroll_slots in
  csrc/cuda/params.cuh are sized to fit them).

Skipped, with the reason, where _C was built without CUDA kernels or no cuobjdump is found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest
import torch

from adain_ext import _extension

# RowMode values (csrc/cuda/params.cuh) as the kernel symbols spell them. contig_rows_kernel
# takes the first eight (all of them read slots of a big tensor); MeanStdBackward is a mode of
# finalize_rows_kernel only. WRITING_MODES: the contig_rows_kernel modes that write the output.
ROW_MODES = {0: "Stats", 1: "Affine", 2: "Fused", 3: "AffineBackward", 4: "PartialWelford",
             5: "PartialSums", 6: "Apply", 7: "ApplyGrad", 8: "MeanStdBackward"}
CONTIG_ROW_MODES = [mode for mode in ROW_MODES.values() if mode != "MeanStdBackward"]
WRITING_MODES = {"Affine", "Fused", "AffineBackward", "Apply", "ApplyGrad"}
# The contig_rows_kernel modes the affine op's prologue is instantiated in (kPrologue).
PROLOGUE_ROW_MODES = ["Affine", "AffineBackward", "PartialWelford", "PartialSums", "Apply",
                      "ApplyGrad"]
# Stack bytes allowed in a non-fp64 kernel: a couple of spilled values. The spills this guards
# against were 24-40 bytes (16-bit backward at two slots per step).
MAX_STACK_BYTES = 16


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str = ""   # contig_rows_kernel, cl_partial_kernel, ...
    dtype: str = ""  # float, double, Half, BFloat16
    mode: str = ""   # RowMode of contig_rows_kernel or finalize_rows_kernel
    prologue: bool = False  # a kernel of the affine op's prologue (kPrologue, *_prologue_*)
    opcodes: set = field(default_factory=set)
    resources: dict = field(default_factory=dict)

    def __str__(self) -> str:
        mode = f"<{self.mode}>" if self.mode else ""
        return f"{self.arch} {self.name}<{self.dtype}>{mode}"


def _cuobjdump() -> str | None:
    candidates = [shutil.which("cuobjdump")]
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    candidates.append(os.path.join(cuda_home, "bin", "cuobjdump"))
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _describe(kernel: Kernel) -> None:
    m = re.match(r"_ZN5adain4cuda\d+(\w+?_kernel)I(.*)", kernel.mangled)
    assert m, f"unexpected kernel symbol {kernel.mangled}"
    kernel.name, args = m.groups()
    for code, dtype in (("N3c108BFloat16E", "BFloat16"), ("N3c104HalfE", "Half"),
                        ("f", "float"), ("d", "double")):
        if args.startswith(code):
            kernel.dtype = dtype
            break
    assert kernel.dtype, f"unexpected template arguments in {kernel.mangled}"
    mode = re.search(r"RowModeE(\d)E", args)
    if mode:
        kernel.mode = ROW_MODES[int(mode.group(1))]
    # contig_rows_kernel<T, acc_t, kMode, kEpilogue, kPrologue>; the other prologue kernels are
    # named for it.
    kernel.prologue = "prologue" in kernel.name or bool(re.search(r"RowModeE\dELb\dELb1E", args))


def _run(tool: str, *args: str) -> str:
    result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=300)
    if "does not contain device code" in result.stdout + result.stderr:
        pytest.skip("adain_ext._C was built without CUDA kernels (ADAIN_EXT_CUDA=0 or no toolkit)")
    assert result.returncode == 0, f"{tool} {' '.join(args)} failed:\n{result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def kernels() -> list[Kernel]:
    if not _extension.HAS_CPP:
        pytest.skip("adain_ext._C is not built")
    if not _extension.has_kernel("cuda"):
        pytest.skip("adain_ext._C was built without CUDA kernels (ADAIN_EXT_CUDA=0 or no toolkit)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (neither on PATH, in CUDA_HOME/bin, nor shipped with triton)")
    from adain_ext import _C

    found: dict[tuple[str, str], Kernel] = {}

    def kernel(arch: str, mangled: str) -> Kernel:
        if (arch, mangled) not in found:
            found[arch, mangled] = Kernel(arch, mangled)
            _describe(found[arch, mangled])
        return found[arch, mangled]

    # SASS: "arch = sm_90" headers, "Function : <symbol>" per kernel, then instructions such as
    # "/*0d60*/  @!P0 LDG.E.128 R12, desc[UR12][R2.64] ;".
    arch, current = None, None
    for line in _run(tool, "-sass", _C.__file__).splitlines():
        if line.startswith("arch = "):
            arch = line.split("=")[1].strip()
        elif "Function : " in line:
            current = kernel(arch, line.split("Function : ")[1].strip())
        elif current is not None:
            m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
            if m:
                current.opcodes.add(m.group(1))
    # Resources: "Function <symbol>:" then "REG:64 STACK:0 SHARED:512 LOCAL:0 ...".
    arch, current = None, None
    for line in _run(tool, "-res-usage", _C.__file__).splitlines():
        if line.startswith("arch = "):
            arch = line.split("=")[1].strip()
        elif line.strip().startswith("Function "):
            current = kernel(arch, line.strip()[len("Function "):].rstrip(":"))
        elif current is not None and "REG:" in line:
            current.resources = {k: int(v) for k, v in re.findall(r"(\w+)(?:\[\d+\])?:(\d+)", line)}
            current = None
    assert found, "cuobjdump listed no kernels"
    return list(found.values())


def _streaming(kernels: list[Kernel]) -> list[Kernel]:
    return [k for k in kernels if k.name in ("contig_rows_kernel", "cl_partial_kernel",
                                             "cl_apply_kernel", "cl_partial_prologue_kernel",
                                             "cl_apply_prologue_kernel")]


def test_every_kernel_family_is_present(kernels):
    archs = {k.arch for k in kernels}
    for arch in archs:
        here = {(k.name, k.dtype, k.mode) for k in kernels if k.arch == arch}
        for dtype in ("float", "double", "Half", "BFloat16"):
            for mode in CONTIG_ROW_MODES:
                assert ("contig_rows_kernel", dtype, mode) in here, (arch, dtype, mode)
            assert ("cl_partial_kernel", dtype, "") in here, (arch, dtype)
            assert ("cl_apply_kernel", dtype, "") in here, (arch, dtype)
        # The affine op's prologue: its modes of contig_rows_kernel, its channels_last kernels
        # and its split backward's finalize.
        prologue = {(k.name, k.dtype, k.mode) for k in kernels if k.arch == arch and k.prologue}
        for dtype in ("float", "double", "Half", "BFloat16"):
            for mode in PROLOGUE_ROW_MODES:
                assert ("contig_rows_kernel", dtype, mode) in prologue, (arch, dtype, mode)
            assert ("cl_partial_prologue_kernel", dtype, "") in prologue, (arch, dtype)
            assert ("cl_apply_prologue_kernel", dtype, "") in prologue, (arch, dtype)
        for dtype in ("float", "double"):
            assert ("finalize_prologue_backward_kernel", dtype, "") in prologue, (arch, dtype)
    # setup.py's default without a GPU (CI): both archs must be in the binary. With a GPU it
    # builds for that GPU's arch only.
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        assert {"sm_80", "sm_90"} <= archs, archs


def test_streaming_kernels_load_16_bytes_per_instruction(kernels):
    narrow = [str(k) for k in _streaming(kernels)
              if not any(op.startswith("LDG.E.128") for op in k.opcodes)]
    assert not narrow, f"no 16-byte global load in: {narrow}"


def test_output_kernels_store_16_bytes_per_instruction(kernels):
    writers = [k for k in _streaming(kernels)
               if k.name == "cl_apply_kernel" or k.mode in WRITING_MODES]
    assert writers
    narrow = [f"{k} {sorted(op for op in k.opcodes if op.startswith('STG'))}" for k in writers
              if "STG.E.128" not in k.opcodes]
    assert not narrow, f"no plain 16-byte global store in: {narrow}"


def test_no_local_arrays_and_no_real_spills(kernels):
    assert all(k.resources for k in kernels), [str(k) for k in kernels if not k.resources]
    local = [str(k) for k in kernels if k.resources["LOCAL"] != 0]
    assert not local, f"kernels with local-memory arrays: {local}"
    spilling = [f"{k} STACK:{k.resources['STACK']}" for k in kernels
                if k.dtype != "double" and k.resources["STACK"] > MAX_STACK_BYTES]
    assert not spilling, f"kernels spilling more than {MAX_STACK_BYTES} bytes: {spilling}"
    # sm_90 (H100/H200) is the card the benchmarks target: no stack frame at all there. The
    # prologue's kernels excepted (within MAX_STACK_BYTES, above): their 8-16 bytes are registers
    # saved around the 64-bit division that finds a row's channel and noise row (CALL to the
    # division routine, once per row or tile, outside the element loops; nvcc 13.0).
    hopper = [f"{k} STACK:{k.resources['STACK']}" for k in kernels
              if k.arch == "sm_90" and k.dtype != "double" and k.resources["STACK"] != 0
              and not k.prologue]
    assert not hopper, f"sm_90 kernels with a stack frame: {hopper}"

