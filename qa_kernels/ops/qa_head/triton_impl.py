"""Triton kernels for the fused QA head, and the launchers that allocate outputs and pick blocks.

Forward (2 launches; 3 with one_pass):
  _qa_logits_kernel   one pass over hidden: both logits of each token, written straight into the
                      two (B, S) outputs (no (B, S, 2) intermediate, no split copy). ONE_PASS: also
                      each block's share of the loss's weight gradient, from the tile it has just
                      read (a block-local softmax max and exp-weighted sum of hidden's rows, fp32).
  _qa_loss_kernel     one program: per-row logsumexp in fp32 (online over S), clamp/ignore of the
                      positions, the mean (or sum / num_items) per side, the loss, and the per-side
                      gradient scale for the backward (one_pass: also each row's sum of its
                      softmax, from the logsumexp's running sum). Everything stays on the device.
  _qa_one_pass_combine_kernel  (one_pass) rescales the blocks' shares by exp(block max - lse),
                      subtracts the target rows and scales: grad_weight_loss, in a fixed order;
                      and grad_bias_loss from the rows' softmax sums.
Backward (2 launches):
  _qa_head_bwd_kernel d_logits from the saved logits, then one pass over H that writes grad_hidden
                      and per-block fp32 partials of grad_weight / grad_bias.
  _qa_reduce_kernel   sums the partials in a fixed order: deterministic, no float atomics.

Bytes that must move (the floor): forward reads hidden once; backward writes grad_hidden once and,
two-pass, reads hidden once more (for grad_weight; in training it often hits L2, the forward having
just read it). One pass (op.py: only the loss is differentiated), the forward's weight gradient
spares that second read. Everything else is O(B * S) or O(H), but for the fp32 partials of the
weight gradients: 2 * 4 * H bytes per 32 tokens, an eighth of a bf16 hidden, written and read once.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..._env import triton_interpreter_on

# ----------------------------------------------------------------------------------------------
# Launch heuristics, in one place. The interpreter's cost is per program and per op, so it gets
# the largest blocks. On a GPU: no register spills and moderate register use, checked by compiling
# for sm_90 without a GPU (tests/triton_aot.py, with Triton 3.6 and 3.9; contiguous; S = 384 with
# its divisible-by-16 hint, S = 383 without): the forward at (16, 256, 4) uses 70-127 registers.
# The backward keeps BLOCK_S = 32 (BLOCK_S = 16 would write twice the grad_weight partials:
# 2 * 4 * H bytes per program) over 16 warps: at 4 warps it used 71-253 registers, and with the
# S % 16 == 0 hint Triton 3.9 spilled 8 bytes (bf16, logit gradients, no loss: 128 registers; 8 warps
# spilled on 3.6 and 3.9 too); at 16 it uses at most 86, no stack, on both. Not yet tuned on hardware.
# ----------------------------------------------------------------------------------------------
# The one-pass forward takes the backward's BLOCK_S = 32 (its partials: 2 * 4 * H bytes per program,
# an eighth of the bf16 tile it reads; BLOCK_S = 16 would double them) and keeps the forward's
# BLOCK_H = 256, over 16 warps: the tile's split over threads and warps along H is then the plain
# forward's (the layouts of Triton 3.6 and 3.9: 4 or 8 elements a thread, 32 threads, 2 or 1 warps
# along H), so the same per-token reduction order and the same logits, as far as the layouts tell
# (not run on a GPU). At 8 warps Triton 3.6 spilled (fp32 hidden under bf16 autocast, S = 383: 128
# registers, 16 bytes; 8 bytes at the plain forward's (16, 256, 4)); at 16 it uses 52-92 registers on
# 3.6, 54-64 on 3.9, no stack. (32, 128, 8) was clean too (at most 62), but with another BLOCK_H.
#                      (BLOCK_S, BLOCK_H, num_warps)
_GPU_FWD_BLOCKS = (16, 256, 4)
_GPU_FWD_ONE_PASS_BLOCKS = (32, 256, 16)
_GPU_BWD_BLOCKS = (32, 256, 16)
_INTERPRETER_TOKEN_BLOCKS = (256, 1024, 1)
# The loss kernel (one program, latency-bound) takes 4096 logits per step (BLOCK_B x BLOCK_S: 8 x 512
# at S = 384) over 32 warps. At 4, 8 and 16 warps ptxas spilled on Triton 3.6 or 3.9 (B = 31,
# S = 383: 3.6 spilled 24 bytes at 8 warps, 128 registers; 3.9 up to 16 bytes at 16; both at 4); at
# 32 it uses at most 64 registers (the cap at 1024 threads), no stack, on both.
_GPU_LOSS_TILE = 4096
_GPU_LOSS_WARPS = 32
_INTERPRETER_LOSS_TILE = 1 << 16
_GPU_REDUCE_BLOCKS = (64, 32)  # (BLOCK_P, BLOCK_H): narrow in H so that H / 32 programs share the reduction
_INTERPRETER_REDUCE_BLOCKS = (256, 1024)
# The combine kernel (one program per 8 columns of H: 128 at H = 1024, each reading 32-byte pieces of
# the partial rows) takes 256 partial rows per step (BLOCK_B x BLOCK_C: 16 x 16 at S = 384, so B = 32
# is 2 steps; 2 x 128 at S = 4096) over 8 warps: 103-127 registers on 3.9, 111-115 on 3.6, no stack.
# At 4 warps 3.9 spilled 16 bytes (168 registers); 16 columns at 4 warps (128 rows) used 160-166.
#                      (rows per step = BLOCK_B x BLOCK_C, BLOCK_H, num_warps)
_GPU_COMBINE_BLOCKS = (256, 8, 8)
_INTERPRETER_COMBINE_BLOCKS = (1 << 10, 1024, 1)


def _pow2(n: int, cap: int) -> int:
    """The smallest power of two >= n (at least 1), at most ``cap``."""
    return min(triton.next_power_of_2(max(n, 1)), cap)


def _loss_blocks(B: int, S: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_S, num_warps) of the loss kernel: whole rows per step when they fit the tile."""
    interpret = triton_interpreter_on()
    tile = _INTERPRETER_LOSS_TILE if interpret else _GPU_LOSS_TILE
    block_s = _pow2(S, tile)
    return _pow2(B, max(1, tile // block_s)), block_s, 1 if interpret else _GPU_LOSS_WARPS


def _combine_blocks(B: int, NB: int, H: int) -> tuple[int, int, int, int]:
    """(BLOCK_B, BLOCK_C, BLOCK_H, num_warps) of the one-pass combine kernel: all of a row's NB partial
    rows per step when they fit, and as many batch rows as fill the step."""
    rows, block_h, warps = _INTERPRETER_COMBINE_BLOCKS if triton_interpreter_on() else _GPU_COMBINE_BLOCKS
    block_c = _pow2(NB, rows)
    return _pow2(B, max(1, rows // block_c)), block_c, _pow2(H, block_h), warps


def _token_blocks(S: int, H: int, gpu_blocks: tuple[int, int, int]) -> tuple[int, int, int]:
    block_s, block_h, warps = _INTERPRETER_TOKEN_BLOCKS if triton_interpreter_on() else gpu_blocks
    return _pow2(S, block_s), _pow2(H, block_h), warps


_MAX_GRID = (2**31 - 1, 65535, 65535)  # CUDA's limits on grid dims 0, 1 and 2


def _token_grid(B: int, S: int, block_s: int) -> tuple[int, int, int]:
    """The grid of the token kernels, (B, S-blocks) with the S-blocks split over dims 1 and 2: CUDA caps
    those at 65535, which one dim of S-blocks passes from S = 65536 * BLOCK_S (about 1M tokens).
    S-block = pid(2) * grid(1) + pid(1) (see _token_block_ids); the last few may lie past S."""
    if S > 2**31 - 1 - block_s:  # token offsets within a row are int32 (offsets into hidden are int64)
        raise ValueError(f"qa_head (Triton): S = {S} tokens per row; the kernels take at most {2**31 - 1 - block_s}")
    blocks = triton.cdiv(S, block_s)
    splits = max(1, triton.cdiv(blocks, _MAX_GRID[1]))
    grid = (B, triton.cdiv(blocks, splits), splits)
    if any(n > limit for n, limit in zip(grid, _MAX_GRID, strict=True)):
        raise ValueError(f"qa_head (Triton): grid {grid} for B = {B}, S = {S}; CUDA allows at most {_MAX_GRID}")
    return grid


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _token_block_ids():
    """(b, S-block) of this program in the grid of _token_grid, and its index among all the programs
    (b fastest, the order they run in). Below S = 65536 * BLOCK_S, grid dim 2 is 1: S-block = pid(1).
    A program past S has its tokens masked off: it loads and stores nothing (writes zero partials)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)
    return pid_b, pid_s, pid_b * (tl.num_programs(1) * tl.num_programs(2)) + pid_s


@triton.jit
def _qa_logits_kernel(
    hidden_ptr, weight_ptr, bias_ptr, start_ptr, end_ptr, partial_ptr, max_ptr,  # pointers
    S, H,  # sizes
    stride_hb, stride_hs, stride_hh, stride_wk, stride_wh, stride_bias,  # strides
    HAS_BIAS: tl.constexpr, ROUND_INPUTS: tl.constexpr, ONE_PASS: tl.constexpr,  # meta
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    # start[b, s] = sum_h hidden[b, s, h] * weight[0, h] + bias[0]   (fp32 accumulation)
    # end[b, s]   = sum_h hidden[b, s, h] * weight[1, h] + bias[1]
    # ROUND_INPUTS (autocast): inputs are first rounded to the output dtype, as nn.Linear's
    # autocast casts would round them, without materializing the cast copy of hidden.
    out_ty = start_ptr.dtype.element_ty
    pid_b, pid_s, block = _token_block_ids()  # block: this program's row in the partials (ONE_PASS)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    rows = hidden_ptr + pid_b * stride_hb + offs_s.to(tl.int64)[:, None] * stride_hs
    acc_start = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc_end = tl.zeros([BLOCK_S], dtype=tl.float32)
    for hb in range(0, tl.cdiv(H, BLOCK_H)):
        offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        x = tl.load(rows + offs_h.to(tl.int64)[None, :] * stride_hh,
                    mask=mask_s[:, None] & mask_h[None, :], other=0.0)  # fmt: skip
        w0 = tl.load(weight_ptr + offs_h * stride_wh, mask=mask_h, other=0.0)
        w1 = tl.load(weight_ptr + stride_wk + offs_h * stride_wh, mask=mask_h, other=0.0)
        if ROUND_INPUTS:
            x, w0, w1 = x.to(out_ty), w0.to(out_ty), w1.to(out_ty)
        x = x.to(tl.float32)
        acc_start += tl.sum(x * w0.to(tl.float32)[None, :], axis=1)
        acc_end += tl.sum(x * w1.to(tl.float32)[None, :], axis=1)
    if HAS_BIAS:
        b0 = tl.load(bias_ptr)
        b1 = tl.load(bias_ptr + stride_bias)
        if ROUND_INPUTS:
            b0, b1 = b0.to(out_ty), b1.to(out_ty)
        acc_start += b0.to(tl.float32)
        acc_end += b1.to(tl.float32)
    out = pid_b * S + offs_s
    start = acc_start.to(out_ty)
    end = acc_end.to(out_ty)
    tl.store(start_ptr + out, start, mask=mask_s)
    tl.store(end_ptr + out, end, mask=mask_s)

    if ONE_PASS:
        # The block's share of grad_weight_loss (op.py), finished by _qa_one_pass_combine_kernel:
        #   m[p, k]          = max_{s in block p} x_k[b, s]    (the stored, rounded logits)
        #   partial[p, k, :] = sum_{s in block p} exp(x_k[b, s] - m[p, k]) * hidden[b, s, :]
        # so that softmax_k[b, s] = exp(x - m) * exp(m - lse), both factors <= 1 whatever the logits.
        # Tokens past S are -inf. A block whose logits are all -inf (or that lies past S) shifts by
        # 0, not by -inf (-inf - -inf is NaN): its weights are 0, and with them its partial.
        x_start = tl.where(mask_s, start.to(tl.float32), float("-inf"))
        x_end = tl.where(mask_s, end.to(tl.float32), float("-inf"))
        m_start = tl.max(x_start, axis=0)
        m_end = tl.max(x_end, axis=0)
        e_start = tl.exp(x_start - tl.where(m_start == float("-inf"), 0.0, m_start))
        e_end = tl.exp(x_end - tl.where(m_end == float("-inf"), 0.0, m_end))
        tl.store(max_ptr + block * 2, m_start)
        tl.store(max_ptr + block * 2 + 1, m_end)
        # The same tile again, read from cache, not DRAM: this program has just read it, and the H
        # blocks go in reverse, the most recently read (most likely still in L1) first.
        part = partial_ptr + block * 2 * H
        num_h = tl.cdiv(H, BLOCK_H)
        for i in range(0, num_h):
            offs_h = (num_h - 1 - i) * BLOCK_H + tl.arange(0, BLOCK_H)
            mask_h = offs_h < H
            x = tl.load(rows + offs_h.to(tl.int64)[None, :] * stride_hh,
                        mask=mask_s[:, None] & mask_h[None, :], other=0.0)  # fmt: skip
            if ROUND_INPUTS:
                x = x.to(out_ty)
            x = x.to(tl.float32)
            tl.store(part + offs_h, tl.sum(x * e_start[:, None], axis=0), mask=mask_h)
            tl.store(part + H + offs_h, tl.sum(x * e_end[:, None], axis=0), mask=mask_h)


@triton.jit
def _clamp_target(pos, S):
    """Positions clamped to [0, S]: negative -> 0 (eager trains them towards token 0), >= S -> S,
    the ignore index. Returns the target and whether the row counts."""
    target = tl.minimum(tl.maximum(pos.to(tl.int64), 0), S)
    return target, target != S


@triton.jit
def _cross_entropy_rows(
    logits_ptr, pos_ptr,  # pointers
    rows, mask_b, S, stride_pos,  # rows (BLOCK_B,) int64, sizes, strides
    BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    # lse[b] = logsumexp_s x[b, s]  (online over S in BLOCK_S chunks: m = running max, l = sum)
    # nll[b] = lse[b] - x[b, target[b]]  on valid rows, 0 on ignored ones
    # psum[b] = sum_s softmax(x[b])[s] = l * exp(m - lse): 1 up to rounding (the bias's gradient)
    row_base = rows * S
    m = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_B], dtype=tl.float32)
    for sb in range(0, tl.cdiv(S, BLOCK_S)):
        cols = sb * BLOCK_S + tl.arange(0, BLOCK_S)
        x = tl.load(logits_ptr + row_base[:, None] + cols[None, :],
                    mask=mask_b[:, None] & (cols < S)[None, :], other=float("-inf")).to(tl.float32)  # fmt: skip
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # A row whose chunks so far are all -inf (or a row past B) keeps m = -inf: shift by 0 there,
        # not by -inf (-inf - -inf is NaN), so l stays 0 until a finite logit arrives.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        l = l * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
        m = m_new
    lse = m + tl.log(l)
    target, valid = _clamp_target(tl.load(pos_ptr + rows * stride_pos, mask=mask_b, other=0), S)
    valid = valid & mask_b
    x_target = tl.load(logits_ptr + row_base + target, mask=valid, other=0.0).to(tl.float32)
    nll = tl.where(valid, lse - x_target, 0.0)
    psum = l * tl.exp(m - lse)
    return lse, nll, valid, psum


@triton.jit
def _qa_loss_kernel(
    start_ptr, end_ptr, start_pos_ptr, end_pos_ptr, num_items_ptr,  # pointers (inputs)
    loss_ptr, lse_ptr, scale_ptr, psum_ptr,  # pointers (outputs)
    B, S, num_items_value,  # sizes, scalars
    stride_sp, stride_ep,  # strides
    NUM_ITEMS_MODE: tl.constexpr,  # 0: mean over valid rows, 1: / num_items_value, 2: / *num_items_ptr
    STORE_PSUM: tl.constexpr,  # one_pass: also psum (B, 2), for grad_bias_loss
    BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    # side_k = sum_b nll_k[b] / n_k   (n_k = valid rows of side k, or num_items)
    # loss = (side_0 + side_1) / 2;  scale_k = dloss / dnll_k[b] = 1 / (2 n_k)
    # STORE_PSUM: psum[b, k] = sum_s softmax_k[b, s], read by the combine kernel (one more reduction
    # here, at this kernel's 64 registers a thread, spilled on sm_90).
    # One program, fixed order: the loss is deterministic and needs no second launch.
    acc_nll_s = tl.zeros([BLOCK_B], dtype=tl.float32)
    acc_nll_e = tl.zeros([BLOCK_B], dtype=tl.float32)
    acc_cnt_s = tl.zeros([BLOCK_B], dtype=tl.float32)
    acc_cnt_e = tl.zeros([BLOCK_B], dtype=tl.float32)
    for bb in range(0, tl.cdiv(B, BLOCK_B)):
        rows = (bb * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
        mask_b = rows < B
        lse_s, nll_s, valid_s, psum_s = _cross_entropy_rows(start_ptr, start_pos_ptr, rows, mask_b, S,
                                                            stride_sp, BLOCK_B, BLOCK_S)  # fmt: skip
        lse_e, nll_e, valid_e, psum_e = _cross_entropy_rows(end_ptr, end_pos_ptr, rows, mask_b, S,
                                                            stride_ep, BLOCK_B, BLOCK_S)  # fmt: skip
        tl.store(lse_ptr + rows * 2, lse_s, mask=mask_b)
        tl.store(lse_ptr + rows * 2 + 1, lse_e, mask=mask_b)
        if STORE_PSUM:
            tl.store(psum_ptr + rows * 2, psum_s, mask=mask_b)
            tl.store(psum_ptr + rows * 2 + 1, psum_e, mask=mask_b)
        acc_nll_s += nll_s
        acc_nll_e += nll_e
        acc_cnt_s += valid_s.to(tl.float32)
        acc_cnt_e += valid_e.to(tl.float32)
    if NUM_ITEMS_MODE == 0:
        denom_s = tl.sum(acc_cnt_s, axis=0)  # 0 valid rows: 0 / 0 = NaN, as eager
        denom_e = tl.sum(acc_cnt_e, axis=0)
    elif NUM_ITEMS_MODE == 1:
        denom_s = num_items_value
        denom_e = num_items_value
    else:
        denom_s = tl.load(num_items_ptr).to(tl.float32)
        denom_e = denom_s
    loss = (tl.sum(acc_nll_s, axis=0) / denom_s + tl.sum(acc_nll_e, axis=0) / denom_e) / 2
    tl.store(loss_ptr, loss)
    tl.store(scale_ptr, 0.5 / denom_s)
    tl.store(scale_ptr + 1, 0.5 / denom_e)


@triton.jit
def _qa_one_pass_combine_kernel(
    partial_ptr, max_ptr, lse_ptr, psum_ptr, scale_ptr, start_pos_ptr, end_pos_ptr,  # pointers (inputs)
    hidden_ptr, start_ptr, grad_w_ptr, grad_b_ptr,  # pointers (start_ptr: only its dtype is read; outputs)
    B, S, H, NB,  # sizes (NB: partial rows per batch row)
    stride_hb, stride_hs, stride_hh, stride_sp, stride_ep,  # strides
    ROUND_INPUTS: tl.constexpr,  # meta
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    # grad_weight_loss[k, :] = scale_k * sum_{valid b} (sum_c exp(m[b, c, k] - lse[b, k]) * partial[b, c, k, :]
    #                                                    - hidden[b, target_k[b], :])
    # per row first (its two terms nearly cancel once the model is trained), then over rows; 0 for a
    # side with no valid row (tl.where, not a product: its scale is inf). Ignored rows and rows past
    # B go through tl.where too (a +inf logit puts NaN into a row's partials and lse), and so do the
    # factors of blocks past NB (their -inf max less a -inf lse would be NaN).
    # Program 0 also writes grad_bias_loss[k] = scale_k * sum_{valid b} (psum[b, k] - 1), the same way.
    # The same order every call (BLOCK_B rows, then BLOCK_C blocks a step, each step's sums a fixed
    # tree): bitwise deterministic, no atomics.
    out_ty = start_ptr.dtype.element_ty
    offs_h = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    acc_start = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    acc_end = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    count_start = tl.zeros([BLOCK_B], dtype=tl.float32)
    count_end = tl.zeros([BLOCK_B], dtype=tl.float32)
    bias_start = tl.zeros([BLOCK_B], dtype=tl.float32)
    bias_end = tl.zeros([BLOCK_B], dtype=tl.float32)
    for bb in range(0, tl.cdiv(B, BLOCK_B)):
        rows = (bb * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
        mask_b = rows < B
        target_s, valid_s = _clamp_target(tl.load(start_pos_ptr + rows * stride_sp, mask=mask_b, other=0), S)
        target_e, valid_e = _clamp_target(tl.load(end_pos_ptr + rows * stride_ep, mask=mask_b, other=0), S)
        valid_s = valid_s & mask_b
        valid_e = valid_e & mask_b
        lse_s = tl.load(lse_ptr + rows * 2, mask=mask_b, other=0.0)
        lse_e = tl.load(lse_ptr + rows * 2 + 1, mask=mask_b, other=0.0)
        row_s = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
        row_e = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
        for cb in range(0, tl.cdiv(NB, BLOCK_C)):
            offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
            blocks = rows[:, None] * NB + offs_c[None, :]  # (BLOCK_B, BLOCK_C) rows of the partials
            mask_bc = mask_b[:, None] & (offs_c < NB)[None, :]
            m_s = tl.load(max_ptr + blocks * 2, mask=mask_bc, other=float("-inf"))
            m_e = tl.load(max_ptr + blocks * 2 + 1, mask=mask_bc, other=float("-inf"))
            c_s = tl.where(mask_bc, tl.exp(m_s - lse_s[:, None]), 0.0)
            c_e = tl.where(mask_bc, tl.exp(m_e - lse_e[:, None]), 0.0)
            ptrs = partial_ptr + blocks[:, :, None] * 2 * H + offs_h[None, None, :]
            mask = mask_bc[:, :, None] & mask_h[None, None, :]
            p_s = tl.load(ptrs, mask=mask, other=0.0)
            p_e = tl.load(ptrs + H, mask=mask, other=0.0)
            row_s += tl.sum(p_s * c_s[:, :, None], axis=1)
            row_e += tl.sum(p_e * c_e[:, :, None], axis=1)
        at = hidden_ptr + rows[:, None] * stride_hb + offs_h.to(tl.int64)[None, :] * stride_hh
        h_s = tl.load(at + target_s[:, None] * stride_hs, mask=valid_s[:, None] & mask_h[None, :], other=0.0)
        h_e = tl.load(at + target_e[:, None] * stride_hs, mask=valid_e[:, None] & mask_h[None, :], other=0.0)
        if ROUND_INPUTS:
            h_s, h_e = h_s.to(out_ty), h_e.to(out_ty)
        acc_start += tl.where(valid_s[:, None], row_s - h_s.to(tl.float32), 0.0)
        acc_end += tl.where(valid_e[:, None], row_e - h_e.to(tl.float32), 0.0)
        count_start += valid_s.to(tl.float32)
        count_end += valid_e.to(tl.float32)
        bias_start += tl.where(valid_s, tl.load(psum_ptr + rows * 2, mask=valid_s, other=1.0) - 1.0, 0.0)
        bias_end += tl.where(valid_e, tl.load(psum_ptr + rows * 2 + 1, mask=valid_e, other=1.0) - 1.0, 0.0)
    coef_s = tl.where(tl.sum(count_start, axis=0) > 0, tl.load(scale_ptr), 0.0)
    coef_e = tl.where(tl.sum(count_end, axis=0) > 0, tl.load(scale_ptr + 1), 0.0)
    tl.store(grad_w_ptr + offs_h, tl.sum(acc_start, axis=0) * coef_s, mask=mask_h)
    tl.store(grad_w_ptr + H + offs_h, tl.sum(acc_end, axis=0) * coef_e, mask=mask_h)
    if tl.program_id(0) == 0:
        tl.store(grad_b_ptr, tl.sum(bias_start, axis=0) * coef_s)
        tl.store(grad_b_ptr + 1, tl.sum(bias_end, axis=0) * coef_e)


@triton.jit
def _cross_entropy_grad(
    logits_ptr, pos_ptr, lse_ptr, scale_ptr,  # pointers, already offset to this row / side
    offs_s, mask_s, S, grad_loss,
):  # fmt: skip
    # d x[b, s] = grad_loss * scale * (exp(x[b, s] - lse[b]) - [s == target[b]]), 0 on ignored rows
    # (tl.where, not a product: with no valid row the scale is inf)
    target, valid = _clamp_target(tl.load(pos_ptr), S)
    x = tl.load(logits_ptr + offs_s, mask=mask_s, other=0.0).to(tl.float32)
    p = tl.exp(x - tl.load(lse_ptr))
    d = (p - tl.where(offs_s == target, 1.0, 0.0)) * (tl.load(scale_ptr) * grad_loss)
    return tl.where(mask_s & valid, d, 0.0)


@triton.jit
def _qa_head_bwd_kernel(
    hidden_ptr, weight_ptr, start_ptr, end_ptr,  # pointers (forward inputs / outputs)
    grad_start_ptr, grad_end_ptr, grad_loss_ptr,  # pointers (upstream gradients)
    lse_ptr, scale_ptr, start_pos_ptr, end_pos_ptr,  # pointers (saved loss state)
    grad_hidden_ptr, partial_w_ptr, partial_b_ptr,  # pointers (outputs)
    S, H,  # sizes
    stride_hb, stride_hs, stride_hh, stride_wk, stride_wh, stride_sp, stride_ep,  # strides
    HAS_GRAD_START: tl.constexpr, HAS_GRAD_END: tl.constexpr, HAS_GRAD_LOSS: tl.constexpr,  # meta
    ROUND_INPUTS: tl.constexpr, WRITE_GRAD_HIDDEN: tl.constexpr,
    WRITE_PARTIAL_W: tl.constexpr, WRITE_PARTIAL_B: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    # d_k[b, s]          = grad_logits_k[b, s] + cross-entropy gradient (above), kept in fp32
    #                      (eager rounds it to the logits' dtype; one rounding fewer here)
    # grad_hidden[b,s,:] = d_0[b, s] * weight[0, :] + d_1[b, s] * weight[1, :]
    # partial_w[p, k, :] = sum_{s in block p} d_k[b, s] * hidden[b, s, :]   (fp32)
    # partial_b[p, k]    = sum_{s in block p} d_k[b, s]
    out_ty = start_ptr.dtype.element_ty
    pid_b, pid_s, block = _token_block_ids()  # block: this program's row in the partials
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    tok = pid_b * S + offs_s  # index into the contiguous (B, S) logits and their gradients

    d_start = tl.zeros([BLOCK_S], dtype=tl.float32)
    d_end = tl.zeros([BLOCK_S], dtype=tl.float32)
    if HAS_GRAD_START:
        d_start += tl.load(grad_start_ptr + tok, mask=mask_s, other=0.0).to(tl.float32)
    if HAS_GRAD_END:
        d_end += tl.load(grad_end_ptr + tok, mask=mask_s, other=0.0).to(tl.float32)
    if HAS_GRAD_LOSS:
        grad_loss = tl.load(grad_loss_ptr).to(tl.float32)
        d_start += _cross_entropy_grad(start_ptr + pid_b * S, start_pos_ptr + pid_b * stride_sp,
                                       lse_ptr + pid_b * 2, scale_ptr, offs_s, mask_s, S, grad_loss)  # fmt: skip
        d_end += _cross_entropy_grad(end_ptr + pid_b * S, end_pos_ptr + pid_b * stride_ep,
                                     lse_ptr + pid_b * 2 + 1, scale_ptr + 1, offs_s, mask_s, S,
                                     grad_loss)  # fmt: skip
    if WRITE_PARTIAL_B:
        tl.store(partial_b_ptr + block * 2, tl.sum(d_start, axis=0))
        tl.store(partial_b_ptr + block * 2 + 1, tl.sum(d_end, axis=0))

    rows = hidden_ptr + pid_b * stride_hb + offs_s.to(tl.int64)[:, None] * stride_hs
    grad_rows = grad_hidden_ptr + tok[:, None] * H
    for hb in range(0, tl.cdiv(H, BLOCK_H)):
        offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        mask = mask_s[:, None] & mask_h[None, :]
        if WRITE_GRAD_HIDDEN:
            w0 = tl.load(weight_ptr + offs_h * stride_wh, mask=mask_h, other=0.0)
            w1 = tl.load(weight_ptr + stride_wk + offs_h * stride_wh, mask=mask_h, other=0.0)
            if ROUND_INPUTS:
                w0, w1 = w0.to(out_ty), w1.to(out_ty)
            g = (d_start[:, None] * w0.to(tl.float32)[None, :]
                 + d_end[:, None] * w1.to(tl.float32)[None, :])  # fmt: skip
            tl.store(grad_rows + offs_h[None, :], g.to(grad_hidden_ptr.dtype.element_ty), mask=mask)
        if WRITE_PARTIAL_W:
            x = tl.load(rows + offs_h.to(tl.int64)[None, :] * stride_hh, mask=mask, other=0.0)
            if ROUND_INPUTS:
                x = x.to(out_ty)
            x = x.to(tl.float32)
            part = partial_w_ptr + block * 2 * H + offs_h
            tl.store(part, tl.sum(x * d_start[:, None], axis=0), mask=mask_h)
            tl.store(part + H, tl.sum(x * d_end[:, None], axis=0), mask=mask_h)


@triton.jit
def _qa_reduce_kernel(
    partial_w_ptr, partial_b_ptr, grad_w_ptr, grad_b_ptr,  # pointers
    P, H,  # sizes: partial rows, hidden
    stride_gwk, stride_gwh,  # strides
    WRITE_GRAD_W: tl.constexpr, WRITE_GRAD_B: tl.constexpr,  # meta
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    # grad_weight[k, h] = sum_p partial_w[p, k, h];  grad_bias[k] = sum_p partial_b[p, k]
    # Same order every call: bitwise deterministic.
    pid = tl.program_id(0)
    if WRITE_GRAD_W:
        offs_h = pid * BLOCK_H + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        acc0 = tl.zeros([BLOCK_P, BLOCK_H], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_P, BLOCK_H], dtype=tl.float32)
        for pb in range(0, tl.cdiv(P, BLOCK_P)):
            offs_p = (pb * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
            ptrs = partial_w_ptr + offs_p[:, None] * 2 * H + offs_h[None, :]
            mask = (offs_p < P)[:, None] & mask_h[None, :]
            acc0 += tl.load(ptrs, mask=mask, other=0.0)
            acc1 += tl.load(ptrs + H, mask=mask, other=0.0)
        out_ty = grad_w_ptr.dtype.element_ty
        tl.store(grad_w_ptr + offs_h * stride_gwh, tl.sum(acc0, axis=0).to(out_ty), mask=mask_h)
        tl.store(grad_w_ptr + stride_gwk + offs_h * stride_gwh, tl.sum(acc1, axis=0).to(out_ty),
                 mask=mask_h)  # fmt: skip
    if WRITE_GRAD_B:
        if pid == 0:
            acc_b0 = tl.zeros([BLOCK_P], dtype=tl.float32)
            acc_b1 = tl.zeros([BLOCK_P], dtype=tl.float32)
            for pb in range(0, tl.cdiv(P, BLOCK_P)):
                offs_p = (pb * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
                mask_p = offs_p < P
                acc_b0 += tl.load(partial_b_ptr + offs_p * 2, mask=mask_p, other=0.0)
                acc_b1 += tl.load(partial_b_ptr + offs_p * 2 + 1, mask=mask_p, other=0.0)
            tl.store(grad_b_ptr, tl.sum(acc_b0, axis=0))
            tl.store(grad_b_ptr + 1, tl.sum(acc_b1, axis=0))


# ----------------------------------------------------------------------------------------------
# Launchers: same signatures as the ops in op.py
# ----------------------------------------------------------------------------------------------


def qa_head_fwd(
    hidden: Tensor,  # (B, S, H) any strides
    weight: Tensor,  # (2, H)
    bias: Optional[Tensor],  # (2,)
    start_positions: Optional[Tensor],  # (B,)
    end_positions: Optional[Tensor],  # (B,)
    num_items: Optional[Tensor],  # ()
    num_items_value: Optional[float],
    cast_dtype: Optional[torch.dtype],
    one_pass: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, S, H = hidden.shape
    device = hidden.device
    out_dtype = cast_dtype or hidden.dtype
    start = torch.empty((B, S), dtype=out_dtype, device=device)
    end = torch.empty((B, S), dtype=out_dtype, device=device)
    has_labels = start_positions is not None and end_positions is not None
    one_pass = one_pass and has_labels  # grad_weight_loss is the loss's: none without labels
    block_s, block_h, warps = _token_blocks(S, H, _GPU_FWD_ONE_PASS_BLOCKS if one_pass else _GPU_FWD_BLOCKS)
    grid = _token_grid(B, S, block_s)
    nb = grid[1] * grid[2]  # partial rows per batch row (one per program; the last few may lie past S)
    partial = torch.empty((B, nb, 2, H) if one_pass else (0,), dtype=torch.float32, device=device)
    maxes = torch.empty((B, nb, 2) if one_pass else (0,), dtype=torch.float32, device=device)
    if B > 0:
        _qa_logits_kernel[grid](
            hidden, weight, bias if bias is not None else weight, start, end, partial, maxes,
            S, H,
            *hidden.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0,
            HAS_BIAS=bias is not None, ROUND_INPUTS=cast_dtype is not None, ONE_PASS=one_pass,
            BLOCK_S=block_s, BLOCK_H=block_h, num_warps=warps,
        )  # fmt: skip
    empty = torch.empty((0,), dtype=torch.float32, device=device)
    if start_positions is None or end_positions is None:
        return start, end, empty, empty.clone(), empty.clone(), empty.clone(), empty.clone()

    loss = torch.empty((), dtype=torch.float32, device=device)
    lse = torch.empty((B, 2), dtype=torch.float32, device=device)
    scale = torch.empty((2,), dtype=torch.float32, device=device)
    psum = torch.empty((B, 2) if one_pass else (0,), dtype=torch.float32, device=device)
    block_b, block_s_loss, loss_warps = _loss_blocks(B, S)
    mode = 2 if num_items is not None else (1 if num_items_value is not None else 0)
    _qa_loss_kernel[(1,)](
        start, end, start_positions, end_positions, num_items if num_items is not None else loss,
        loss, lse, scale, psum if one_pass else scale,
        B, S, float(num_items_value) if num_items_value is not None else 1.0,
        start_positions.stride(0), end_positions.stride(0),
        NUM_ITEMS_MODE=mode, STORE_PSUM=one_pass, BLOCK_B=block_b, BLOCK_S=block_s_loss, num_warps=loss_warps,
    )  # fmt: skip
    grad_weight_loss, grad_bias_loss = empty.clone(), empty.clone()
    if one_pass:
        grad_weight_loss = torch.empty((2, H), dtype=torch.float32, device=device)
        grad_bias_loss = torch.empty((2,), dtype=torch.float32, device=device)
        block_b, block_c, block_h, warps = _combine_blocks(B, nb, H)
        # At least one program: program 0 writes grad_bias_loss, even for H = 0.
        _qa_one_pass_combine_kernel[(max(1, triton.cdiv(H, block_h)),)](
            partial, maxes, lse, psum, scale, start_positions, end_positions, hidden, start, grad_weight_loss,
            grad_bias_loss,
            B, S, H, nb,
            *hidden.stride(), start_positions.stride(0), end_positions.stride(0),
            ROUND_INPUTS=cast_dtype is not None,
            BLOCK_B=block_b, BLOCK_C=block_c, BLOCK_H=block_h, num_warps=warps,
        )  # fmt: skip
    return start, end, loss, lse, scale, grad_weight_loss, grad_bias_loss


def qa_head_bwd(
    grad_start: Optional[Tensor],  # (B, S)
    grad_end: Optional[Tensor],  # (B, S)
    grad_loss: Optional[Tensor],  # ()
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    start_logits: Tensor,  # (B, S)
    end_logits: Tensor,  # (B, S)
    lse: Tensor,  # (B, 2)
    scale: Tensor,  # (2,)
    start_positions: Optional[Tensor],  # (B,)
    end_positions: Optional[Tensor],  # (B,)
    cast_dtype: Optional[torch.dtype],
    needs_grad_hidden: bool,
    needs_grad_weight: bool,
    needs_grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    B, S, H = hidden.shape
    device = hidden.device
    block_s, block_h, warps = _token_blocks(S, H, _GPU_BWD_BLOCKS)
    grid = _token_grid(B, S, block_s)
    num_partials = grid[0] * grid[1] * grid[2]  # one row of partials per program
    write_partials = needs_grad_weight or needs_grad_bias

    empty = torch.empty((0,), dtype=torch.float32, device=device)
    grad_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format) if needs_grad_hidden else empty
    # Contiguous whatever the weight's strides, as the fake kernel says (a transposed or tied weight).
    grad_weight = torch.empty(weight.shape, dtype=weight.dtype, device=device) if needs_grad_weight else empty.clone()
    grad_bias = torch.empty((2,), dtype=torch.float32, device=device) if needs_grad_bias else empty.clone()
    partial_w = torch.empty((num_partials, 2, H) if needs_grad_weight else (0,), dtype=torch.float32, device=device)
    partial_b = torch.empty((num_partials, 2), dtype=torch.float32, device=device)

    has_loss = grad_loss is not None and lse.numel() > 0
    # Gradients come from autograd with arbitrary strides; the kernel indexes them as (B, S).
    grad_start = grad_start.contiguous() if grad_start is not None else None
    grad_end = grad_end.contiguous() if grad_end is not None else None
    dummy = start_logits  # pointer for arguments a constexpr switch leaves unread
    pos_strides = (0, 0)
    if has_loss and start_positions is not None and end_positions is not None:
        pos_strides = (start_positions.stride(0), end_positions.stride(0))
    if B > 0 and (needs_grad_hidden or needs_grad_weight or needs_grad_bias):
        _qa_head_bwd_kernel[grid](
            hidden, weight, start_logits, end_logits,
            grad_start if grad_start is not None else dummy,
            grad_end if grad_end is not None else dummy,
            grad_loss if has_loss else dummy,
            lse if has_loss else dummy, scale if has_loss else dummy,
            start_positions if has_loss else dummy, end_positions if has_loss else dummy,
            grad_hidden, partial_w, partial_b,
            S, H,
            *hidden.stride(), *weight.stride(),
            *pos_strides,
            HAS_GRAD_START=grad_start is not None, HAS_GRAD_END=grad_end is not None,
            HAS_GRAD_LOSS=has_loss, ROUND_INPUTS=cast_dtype is not None,
            WRITE_GRAD_HIDDEN=needs_grad_hidden,
            WRITE_PARTIAL_W=needs_grad_weight, WRITE_PARTIAL_B=needs_grad_bias,
            BLOCK_S=block_s, BLOCK_H=block_h, num_warps=warps,
        )  # fmt: skip
    if write_partials:
        block_p, block_h_red = _INTERPRETER_REDUCE_BLOCKS if triton_interpreter_on() else _GPU_REDUCE_BLOCKS
        block_p, block_h_red = _pow2(num_partials, block_p), _pow2(H, block_h_red)
        _qa_reduce_kernel[(triton.cdiv(H, block_h_red) if needs_grad_weight else 1,)](
            partial_w, partial_b, grad_weight if needs_grad_weight else weight, grad_bias,
            num_partials, H,
            *(grad_weight.stride() if needs_grad_weight else (0, 0)),
            WRITE_GRAD_W=needs_grad_weight, WRITE_GRAD_B=needs_grad_bias,
            BLOCK_P=block_p, BLOCK_H=block_h_red,
            num_warps=1 if triton_interpreter_on() else 4,
        )  # fmt: skip
    return grad_hidden, grad_weight, grad_bias
