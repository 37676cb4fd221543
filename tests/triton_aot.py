"""Compile every qa_kernels Triton kernel for a real GPU target, on a machine without a GPU.

Triton's compiler needs no device to go from the kernel's source to PTX and a cubin (ptxas ships
with Triton), so this catches what the CPU interpreter hides: type errors in compiled code, bad
constexpr branches, and register spills. Run as a script with TRITON_INTERPRET unset (the
interpreter replaces the kernels with Python functions); tests/test_triton_compile.py does that.

    python tests/triton_aot.py --arch 90     # prints one JSON line per compiled variant
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qa_kernels.ops.decode_spans import triton_impl as spans_k
from qa_kernels.ops.qa_head import triton_impl as k

# What Triton's launcher specializes at run time for contiguous inputs, mirrored here so the
# compiled code is the one that runs: integer arguments equal to 1 become constants (the unit strides,
# vectorized accesses; the positions' and bias' strides; not the span kernel's K, marked
# do_not_specialize); pointers and 16-divisible integers (H = 768/1024, the row strides) carry
# tt.divisibility = 16. The sizes each variant is checked at (S, and B, L) are passed as values and
# get the same treatment: S = 384 runs with S % 16 == 0 known, S = 383 without (both are compiled).
_UNIT_STRIDES = {"stride_hh": 1, "stride_wh": 1, "stride_gwh": 1, "stride_ss": 1, "stride_es": 1, "stride_ms": 1,
                 "stride_sp": 1, "stride_ep": 1, "stride_bias": 1}  # fmt: skip
_DIVISIBLE_INTS = {"H", "stride_hb", "stride_hs", "stride_wk", "stride_gwk", "stride_sb", "stride_eb", "stride_mb"}
_F32_ARGS = {"num_items_value"}


def _source(fn, pointers: dict[str, str], constexprs: dict[str, object], sizes: dict[str, int]) -> ASTSource:
    """The kernel as the launcher would specialize it for contiguous, 16-byte-aligned inputs of the
    given sizes (integer arguments by name; those not given: no hint, as for a size not divisible by 16)."""
    unspecialized = {p.name for p in fn.params if p.do_not_specialize}
    sizes = {n: v for n, v in sizes.items() if n not in unspecialized}
    constexprs = {**{n: v for n, v in _UNIT_STRIDES.items() if n in fn.arg_names},
                  **{n: v for n, v in sizes.items() if v == 1}, **constexprs}  # fmt: skip
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointers.get(name, "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in _F32_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name in _DIVISIBLE_INTS or sizes.get(name, 1) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


# Each checked size is compiled twice: as given, divisible by 16 (S = 384 from padding to a max length;
# the launcher then passes tt.divisibility = 16), and one less (S = 383 from dynamic padding: no hint).
# One less keeps the blocks the launchers pick, so both compile the same configuration.
def _with_unaligned(shapes):
    """Each shape, then the shape with every size one less."""
    return [tuple(n - i for n in shape) for shape in shapes for i in (0, 1)]


def variants():
    """(kernel, label, pointer dtypes, constexprs, sizes, num_warps) for the combinations the launchers use."""
    fwd_s, fwd_h, fwd_warps = k._GPU_FWD_BLOCKS
    one_s, one_h, one_warps = k._GPU_FWD_ONE_PASS_BLOCKS
    bwd_s, bwd_h, bwd_warps = k._GPU_BWD_BLOCKS
    token_rows = (384, 383)
    for hidden, out, weight in [("fp32", "fp32", "fp32"), ("bf16", "bf16", "bf16"), ("fp16", "fp16", "fp32"),
                                ("fp32", "bf16", "fp32")]:  # fmt: skip
        round_inputs = hidden != out  # the autocast case
        ptrs = {"hidden_ptr": hidden, "weight_ptr": weight, "bias_ptr": weight, "start_ptr": out, "end_ptr": out}
        for S, has_bias in itertools.product(token_rows, (True, False)):
            yield (k._qa_logits_kernel, f"logits S={S} h={hidden} out={out} w={weight} bias={has_bias}", ptrs,
                   {"HAS_BIAS": has_bias, "ROUND_INPUTS": round_inputs, "ONE_PASS": False, "BLOCK_S": fwd_s,
                    "BLOCK_H": fwd_h}, {"S": S}, fwd_warps)  # fmt: skip
        # The one-pass forward (its own blocks): the logits plus the weight gradient's partials.
        for S, has_bias in itertools.product(token_rows, (True, False)):
            yield (k._qa_logits_kernel, f"logits one_pass S={S} h={hidden} out={out} w={weight} bias={has_bias}",
                   ptrs, {"HAS_BIAS": has_bias, "ROUND_INPUTS": round_inputs, "ONE_PASS": True, "BLOCK_S": one_s,
                          "BLOCK_H": one_h}, {"S": S}, one_warps)  # fmt: skip
        # Its combine kernel reads hidden (the target rows) and the partials; blocks as the launcher picks
        # them, at SQuAD-like rows (NB = 12 partial rows per batch row) and long ones (NB = 128).
        for (B, S), pos in itertools.product(_with_unaligned([(32, 384), (64, 4096)]), ("i64", "i32")):
            nb = triton.cdiv(S, one_s)  # the one-pass forward's programs per row (its GPU blocks)
            block_b, block_c, block_h, warps = k._combine_blocks(B, nb, 1024)
            yield (k._qa_one_pass_combine_kernel, f"combine B={B} S={S} NB={nb} h={hidden} out={out} pos={pos}",
                   {"hidden_ptr": hidden, "start_ptr": out, "start_pos_ptr": pos, "end_pos_ptr": pos},
                   {"ROUND_INPUTS": round_inputs, "BLOCK_B": block_b, "BLOCK_C": block_c, "BLOCK_H": block_h},
                   {"B": B, "S": S, "NB": nb}, warps)  # fmt: skip
        bwd_ptrs = {**ptrs, "grad_start_ptr": "fp32", "grad_end_ptr": "fp32", "grad_loss_ptr": "fp32",
                    "start_pos_ptr": "i64", "end_pos_ptr": "i64", "grad_hidden_ptr": hidden}  # fmt: skip
        names = ("HAS_GRAD_START", "HAS_GRAD_END", "HAS_GRAD_LOSS", "WRITE_GRAD_HIDDEN", "WRITE_PARTIAL_W",
                 "WRITE_PARTIAL_B")  # fmt: skip
        for S, flags in itertools.product(token_rows, [(True, True, True, True, True, True),
                                                       (False, False, True, True, False, False),
                                                       (True, True, False, False, True, True)]):  # fmt: skip
            meta = dict(zip(names, flags, strict=True))
            yield (k._qa_head_bwd_kernel, f"bwd S={S} h={hidden} out={out} {''.join(str(int(f)) for f in flags)}",
                   bwd_ptrs, {**meta, "ROUND_INPUTS": round_inputs, "BLOCK_S": bwd_s, "BLOCK_H": bwd_h},
                   {"S": S}, bwd_warps)  # fmt: skip
    # The loss kernel reads only the logits (the output dtype): the autocast case is the bf16 one.
    loss_shapes = _with_unaligned([(32, 384), (64, 4096)])
    for out, (B, S), pos, mode, store_psum in itertools.product(("fp32", "bf16", "fp16"), loss_shapes, ("i64", "i32"),
                                                            (0, 1, 2), (False, True)):  # fmt: skip
        block_b, block_s, loss_warps = k._loss_blocks(B, S)  # the launcher's own choice
        yield (k._qa_loss_kernel, f"loss B={B} S={S} logits={out} pos={pos} mode={mode} psum={store_psum}",
               {"start_ptr": out, "end_ptr": out, "start_pos_ptr": pos, "end_pos_ptr": pos, "num_items_ptr": "i64"},
               {"NUM_ITEMS_MODE": mode, "STORE_PSUM": store_psum, "BLOCK_B": block_b, "BLOCK_S": block_s},
               {"B": B, "S": S}, loss_warps)  # fmt: skip
    for weight in ("fp32", "bf16"):
        for w, b in [(True, True), (True, False), (False, True)]:
            yield (k._qa_reduce_kernel, f"reduce w={weight} grad_w={w} grad_b={b}", {"grad_w_ptr": weight},
                   {"WRITE_GRAD_W": w, "WRITE_GRAD_B": b, "BLOCK_P": k._GPU_REDUCE_BLOCKS[0],
                    "BLOCK_H": k._GPU_REDUCE_BLOCKS[1]}, {}, 4)  # fmt: skip


def span_variants():
    """The span decoder at SQuAD-like and long rows, both scores, with and without a context mask."""
    for S, L, K in [(S - i, L, K) for S, L, K in [(384, 15, 20), (512, 30, 1), (4096, 30, 20)] for i in (0, 1)]:
        block_s, block_l, block_d, block_k, warps = spans_k._blocks(S, L, K)
        for dtype in ("fp32", "bf16"):
            for has_mask, logit_score in [(True, False), (False, True)]:
                ptrs = {"start_ptr": dtype, "end_ptr": dtype, "mask_ptr": "u8", "out_start_ptr": "i64",
                        "out_end_ptr": "i64", "out_score_ptr": "fp32", "null_ptr": "fp32"}  # fmt: skip
                yield (spans_k._decode_spans_kernel, f"spans S={S} L={L} K={K} {dtype} mask={has_mask} "
                       f"logit={logit_score}", ptrs,
                       {"HAS_MASK": has_mask, "LOGIT_SCORE": logit_score, "BLOCK_S": block_s, "BLOCK_L": block_l,
                        "BLOCK_D": block_d, "BLOCK_K": block_k}, {"S": S, "L": L, "K": K}, warps)  # fmt: skip


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers and spill bytes from cuobjdump (shipped with Triton's NVIDIA backend)."""
    cuobjdump = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if not found:
        return {}
    regs, stack, shared, local = map(int, found.groups())
    return {"regs": regs, "stack": stack, "shared": shared, "local": local}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (Hopper), 80 (Ampere)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run with TRITON_INTERPRET unset: the interpreter replaces the kernels")
    target = GPUTarget("cuda", args.arch, 32)
    for fn, label, ptrs, constexprs, sizes, warps in [*variants(), *span_variants()]:
        compiled = triton.compile(_source(fn, ptrs, constexprs, sizes), target=target, options={"num_warps": warps})
        print(json.dumps({"kernel": fn.__name__, "variant": label, "arch": args.arch,
                          **_resource_usage(compiled.asm["cubin"])}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
