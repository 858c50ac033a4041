"""Compiles every Triton kernel of adain_ext.triton to a GPU cubin, without a GPU.

    python tests/triton_compile_check.py [sm] [tag]   # sm: 90 (default), 80, ...; only the
                                                      # variants whose tag contains `tag`

The interpreter (TRITON_INTERPRET=1, how CI runs the kernels) never lowers them, so a kernel can
pass every interpreted test and still fail to compile; this script catches that part on any
machine (triton ships ptxas). Each variant is compiled unspecialised (an odd shape), and
with the specialisation triton's launcher gives a typical shape (16-byte aligned pointers, sizes
divisible by 16), where the streaming kernels must use 16-byte global loads and the kernels that
write the output 16-byte stores (the bandwidth of the GPU backend depends on it, and a changed
mask or index expression can silently lose it) and no kernel may spill (cuobjdump's resource
report of the cubin). Every variant is also compiled at the largest tile the plans use with the
fewest warps autotuning may pick for it (_common.min_warps), where no fp32/fp16/bf16 kernel may
spill more than a few registers (float64 kernels spill there with any number of warps: 16384
doubles and their temporaries outgrow the register file). No float64 kernel may convert an
integer to fp32 (a row length would lose bits). It must run without TRITON_INTERPRET, hence its
own process (tests/test_triton.py runs it in a subprocess). Prints one line per compilation;
exit 1 if any failed.
"""
import importlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

_common, mean_std, affine, fused, row_math = (
    importlib.import_module("adain_ext.triton." + name)
    for name in ("_common", "mean_std", "affine", "fused", "row_math"))

# Argument kinds: "x" a tensor of the input dtype, "acc" of the accumulation dtype, "i32"/"fp32" a
# runtime scalar; constexprs are given per variant.
KERNELS = {
    "row_stats": (mean_std._row_stats_kernel,
                  "X:x MEAN:acc STD_OR_M2:acc R C L segment_len eps_hi:f eps_lo:f ROWS_BUCKET",
                  {"FINALIZE": True}),
    "merge_stats": (mean_std._merge_stats_kernel,
                    ("PARTIAL_MEAN:acc PARTIAL_M2:acc MEAN:acc STD:acc R L segment_len segments "
                    "eps_hi:f eps_lo:f ROWS_BUCKET"), {}),
    "mean_std_backward": (mean_std._mean_std_backward_kernel,
                          ("GRAD_MEAN:acc GRAD_STD:acc X:x MEAN:acc STD:acc GRAD_X:x R C L "
                          "ROWS_BUCKET"), {}),
    "affine_row": (affine._affine_row_kernel,
                   ("X:x MEAN_T:acc STD_T:acc OUT:x MEAN_X:acc STD_X:acc R C L alpha_hi:f "
                   "alpha_lo:f eps_hi:f eps_lo:f negative_slope_hi:f negative_slope_lo:f "
                   "ROWS_BUCKET"), {"ACTIVATION": "none"}),
    "affine_apply": (affine._affine_apply_kernel,
                     ("X:x PARTIAL_MEAN:acc PARTIAL_M2:acc MEAN_T:acc STD_T:acc OUT:x MEAN_X:acc "
                     "STD_X:acc R C L segment_len segments alpha_hi:f alpha_lo:f eps_hi:f "
                     "eps_lo:f negative_slope_hi:f negative_slope_lo:f ROWS_BUCKET"),
                     {"ACTIVATION": "none"}),
    "affine_backward_row": (affine._affine_backward_row_kernel,
                            ("G:x X:x MEAN_X:acc STD_X:acc MEAN_T:acc STD_T:acc GRAD_X:x "
                            "GRAD_MEAN_T:acc GRAD_STD_T:acc R C L alpha_hi:f alpha_lo:f "
                            "negative_slope_hi:f negative_slope_lo:f ROWS_BUCKET"),
                            {"ACTIVATION": "none"}),
    "affine_backward_partial": (affine._affine_backward_partial_kernel,
                                ("G:x X:x MEAN_X:acc STD_X:acc MEAN_T:acc STD_T:acc "
                                "PARTIAL_SUM_G:acc PARTIAL_SUM_G_DEV:acc R C L segment_len "
                                "alpha_hi:f alpha_lo:f negative_slope_hi:f negative_slope_lo:f "
                                "ROWS_BUCKET"),
                                {"UNBIASED": None, "ACTIVATION": "none"}),
    "affine_backward_apply": (affine._affine_backward_apply_kernel,
                              ("G:x X:x MEAN_X:acc STD_X:acc MEAN_T:acc STD_T:acc "
                              "PARTIAL_SUM_G:acc PARTIAL_SUM_G_DEV:acc GRAD_X:x GRAD_MEAN_T:acc "
                              "GRAD_STD_T:acc R C L segments alpha_hi:f alpha_lo:f "
                              "negative_slope_hi:f negative_slope_lo:f ROWS_BUCKET"),
                              {"ACTIVATION": "none"}),
    "fused_row": (fused._fused_row_kernel,
                  ("CONTENT:x STYLE:x OUT:x CONTENT_MEAN:acc CONTENT_STD:acc STYLE_MEAN:acc "
                  "STYLE_STD:acc R C L L_STYLE alpha_hi:f alpha_lo:f eps_hi:f eps_lo:f "
                  "ROWS_BUCKET STYLE_BUCKET"),
                  {"STYLE_CHANNELS_LAST": "other", "BLOCK_L_STYLE": 128}),
}
# The kernels that take the affine op's prologue (PROLOGUE constexpr) and its extra arguments
# (defaults None / 0.0 when no prologue: the plain variants above compile without them).
PROLOGUE_ARGS = {
    "row_stats": "NOISE:x NOISE_WEIGHT:acc BIAS:acc pre_slope_hi:f pre_slope_lo:f",
    "affine_row": "NOISE:x NOISE_WEIGHT:acc BIAS:acc pre_slope_hi:f pre_slope_lo:f",
    "affine_apply": "NOISE:x NOISE_WEIGHT:acc BIAS:acc pre_slope_hi:f pre_slope_lo:f",
    "affine_backward_row": ("NOISE:x NOISE_WEIGHT:acc BIAS:acc GRAD_BIAS:acc "
                            "GRAD_NOISE_WEIGHT:acc pre_slope_hi:f pre_slope_lo:f"),
    "affine_backward_partial": ("NOISE:x NOISE_WEIGHT:acc BIAS:acc PARTIAL_PROLOGUE:acc "
                                "pre_slope_hi:f pre_slope_lo:f"),
    "affine_backward_apply": ("NOISE:x NOISE_WEIGHT:acc BIAS:acc PARTIAL_PROLOGUE:acc "
                              "GRAD_BIAS:acc GRAD_NOISE_WEIGHT:acc pre_slope_hi:f "
                              "pre_slope_lo:f"),
}
# The prologue variants: noise per element (one more tile read, in x's layout) or per position
# ((N, 1, *) rows), each with leaky_relu before and after (the heaviest code: pre, p, m and the
# recomputed output all live), so the prologue costs no 16-byte access and spills nothing either.
PROLOGUES = (("noise_per_element", 2), ("noise_per_position", 1))
DTYPES = {"fp32": "fp32", "fp16": "fp32", "bf16": "fp32", "fp64": "fp64"}  # x -> acc
# The affine kernels (those with an ACTIVATION constexpr) are compiled without an activation and
# with leaky_relu (relu's code is the same select with a constant): the activation's extra tile
# (the recomputed output in the backward) must not cost 16-byte accesses or spill either.
ACTIVATIONS = ("none", "leaky_relu")


def variants():
    for name, (kernel, args, extra) in KERNELS.items():
        activations = ACTIVATIONS if "ACTIVATION" in extra else ("none",)
        prologues = ((None, 0),) + (PROLOGUES if name in PROLOGUE_ARGS else ())
        for (x, acc), activation, (prologue, noise_mode) in itertools.product(
                DTYPES.items(), activations, prologues):
            if prologue is not None and activation == "none" and "ACTIVATION" in extra:
                continue  # the prologue with leaky_relu after it only
            for channels_last in (False, True):
                signature = {}
                for arg in args.split():
                    arg_name, _, kind = arg.partition(":")
                    signature[arg_name] = {"x": f"*{x}", "acc": f"*{acc}", "f": "fp32",
                                           "": "i32"}[kind]
                constexprs = {"UNBIASED": True, "CHANNELS_LAST": channels_last,
                              "BLOCK_R": 8 if channels_last else 1,
                              "BLOCK_L": 256 if channels_last else 2048}
                for key, value in extra.items():
                    if value is None:
                        constexprs.pop(key)
                    else:
                        constexprs[key] = (not channels_last) if value == "other" else value
                if "ACTIVATION" in constexprs:
                    constexprs["ACTIVATION"] = row_math.activation_code(activation)
                for arg in PROLOGUE_ARGS.get(name, "").split():
                    arg_name, _, kind = arg.partition(":")
                    if prologue is None:  # not given: None, a constexpr
                        constexprs[arg_name] = None
                    else:
                        signature[arg_name] = {"x": f"*{x}", "acc": f"*{acc}", "f": "fp32"}[kind]
                if name in PROLOGUE_ARGS:
                    constexprs.update(PROLOGUE=prologue is not None, NOISE_MODE=noise_mode,
                                      PRE_ACTIVATION=row_math.activation_code(
                                          "none" if prologue is None else "leaky_relu"))
                signature.update({key: "constexpr" for key in constexprs})
                tag = f"{name} {x} {'channels_last' if channels_last else 'contiguous'}"
                tag = tag if activation == "none" else f"{tag} {activation}"
                yield (tag if prologue is None else f"{tag} {prologue}"), \
                    kernel, signature, constexprs


# Kernels that write the big output tensor (the others write only per-row statistics/partials).
WRITES_TILES = {"mean_std_backward", "affine_row", "affine_apply", "affine_backward_row",
                "affine_backward_apply", "fused_row"}


INT_TO_FP32 = re.compile(r"cvt\.[a-z]+\.f32\.[su](?:8|16|32|64)\b")


def aligned_attrs(signature: dict) -> dict:
    """The specialisation triton's launcher gives a typical shape: every pointer 16-byte aligned
    (PyTorch allocations are) and every size a multiple of 16 (C = 64..512, H*W = 16..1M)."""
    return {(i,): [["tt.divisibility", 16]] for i, (name, kind) in enumerate(signature.items())
            if kind.startswith("*") or (kind == "i32" and not name.endswith("_BUCKET"))}


def vector_widths(ptx: str) -> tuple[bool, bool]:
    """Whether the PTX has 16-byte global loads / stores (v4.b32, or v2.b64 for fp64 data)."""
    wide = r"\.global(?:\.[a-z0-9]+)*\.(?:v4\.b32|v2\.b64|v4\.f32|v4\.u32)"
    return bool(re.search(r"ld" + wide, ptx)), bool(re.search(r"st" + wide, ptx))


def cubin_resources(cubin: bytes) -> dict | None:
    """REG/STACK/LOCAL/SHARED of a cubin's kernel from cuobjdump -res-usage (triton ships
    cuobjdump); None where it is missing."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(tool, os.X_OK):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, found.groups()))) if found else None


# The heaviest tile the launch plans use (a whole 16384-element row, or 8 channels_last rows of
# 2048), where register pressure peaks, with the fewest warps autotuning may give it. A stack of a
# few registers is tolerated there: triton 3.8 spills 4 bytes (8-byte frame) in the bf16
# channels_last statistics kernel with 8 warps (triton 3.6: none), where 4 warps spill 40 B-5 KB.
MAX_TILE = _common.Limits().max_tile
MAX_TILE_STACK = 16


def compilations():
    """(tag, fn, signature, constexprs, num_warps, aligned) for every variant: unspecialised, and
    specialised as for a typical shape, and at the largest tile. The prologue variants (CI time:
    some 2.5 minutes for all of them) only specialised, and at the largest tile in fp32 and bf16
    (fp16 has bf16's code shape; fp64 spills there whatever it holds); noise per position (its own
    addressing, the registers of noise per element) only in fp32, specialised."""
    for label, kernel, signature, constexprs in variants():
        fn = kernel if isinstance(kernel, JITFunction) else kernel.fn  # under autotune
        dtype = label.split()[1]
        if "noise_per_position" in label:
            if dtype == "fp32":
                yield f"{label} aligned", fn, signature, constexprs, 4, True
            continue
        if "noise_per_element" in label:
            if dtype != "fp16":
                yield f"{label} aligned", fn, signature, constexprs, 4, True
            if dtype not in ("fp32", "bf16"):
                continue
        else:
            yield label, fn, signature, constexprs, 4, False
            yield f"{label} aligned", fn, signature, constexprs, 4, True
        prologue = constexprs.get("PROLOGUE") is True
        tile = _common.max_tile_of(MAX_TILE, prologue)
        big = dict(constexprs, BLOCK_L=tile // constexprs["BLOCK_R"])
        if "BLOCK_L_STYLE" in big:
            big["BLOCK_L_STYLE"] = big["BLOCK_L"]
        yield (f"{label} aligned max-tile", fn, signature, big, _common.min_warps(tile, prologue),
               True)


def main(sm: int = 90, only: str = "") -> int:
    target = GPUTarget("cuda", sm, 32)
    failed = 0
    for tag, fn, signature, constexprs, num_warps, aligned in compilations():
        if only not in tag:
            continue
        name, dtype = tag.split()[:2]
        start = time.perf_counter()
        tag = f"sm_{sm} {tag}"
        try:
            source = ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                               attrs=aligned_attrs(signature) if aligned else None)
            compiled = triton.compile(source, target=target, options={"num_warps": num_warps})
            assert "cubin" in compiled.asm
            loads, stores = vector_widths(compiled.asm["ptx"])
            if dtype == "fp64":
                # fp64 statistics need L and L - 1 exact: through fp32 (`L - 1.0` in a kernel) a
                # row longer than 2**24 gets a rounded divisor.
                assert not INT_TO_FP32.search(compiled.asm["ptx"]), \
                    "an integer converted to fp32 in a float64 kernel"
            resources = cubin_resources(compiled.asm["cubin"])
            if aligned and dtype != "fp64":
                # Bandwidth needs 16-byte accesses wherever the shape allows them, and no spills.
                if name != "merge_stats":
                    assert loads, "no 16-byte global load"
                    assert stores or name not in WRITES_TILES, "no 16-byte global store"
                stack = MAX_TILE_STACK if "max-tile" in tag else 0
                if resources is not None:
                    assert resources["LOCAL"] == 0 and resources["STACK"] <= stack, \
                        f"spills or local arrays: {resources}"
            widths = f"16-byte loads {'yes' if loads else 'no'}, stores {'yes' if stores else 'no'}"
            regs = f", {resources['REG']} registers, stack {resources['STACK']}" if resources else ""
            print(f"ok   {tag} ({widths}{regs}; {time.perf_counter() - start:.2f}s)")
        except Exception as error:  # noqa: BLE001  (report every failing variant, not one)
            failed += 1
            print(f"FAIL {tag}: {type(error).__name__}: {str(error)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90, *sys.argv[2:3]))
