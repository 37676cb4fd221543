"""Triton span decoding: one program per row, the row held in registers, one launch for the batch.

The contract (scores, null score, tie order, the int64 ranking key) is written once, in
``api.py`` (the key: ``keys.py``). Per row, with L = min(max_answer_len, S) and K = top_k:
  1. row statistics: the side values a[i] (start) and b[j] (end): the logits, or their probabilities
     over the row (max and sum of exp of the masked logits);                          O(S)
  2. best[i] = the largest key over the band j = i .. i + L - 1 (each start's best end), computed in
     (S x BLOCK_D) tiles, the end side gathered from global memory (it stays in L1/L2);     O(S L)
  3. K rounds: take the largest best[i] (that is the next span), then rescan only that start's band
     for its best key below the one just taken;                                       O(K (S + L))
Keys are unique, so "below the one just taken" removes exactly the spans already emitted; the
result is the exact top-k of all S x L candidates, in order, without a sort or any S x S tensor.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..._env import triton_interpreter_on
from .keys import _NO_KEY, MASKED_LOGIT, MAX_SEQUENCE_LENGTH

# Module constants a @triton.jit function reads must be constexpr.
_NO_KEY_C = tl.constexpr(_NO_KEY)
_MASKED_C = tl.constexpr(MASKED_LOGIT)

# ----------------------------------------------------------------------------------------------
# Launch heuristics, in one place. The whole row lives in registers (a handful of BLOCK_S vectors,
# one of them int64), so longer rows get more warps; the band tile of step 2 holds about
# _GPU_BAND_TILE elements. The interpreter's cost is per op, so it takes the whole band at once.
# ----------------------------------------------------------------------------------------------
# 32 warps from 4096 tokens (tests/triton_aot.py, sm_90): at 8 warps the masked 4096-token row
# spilled; at 16, Triton 3.6's ptxas spilled 16 bytes (64 registers) on an unmasked 4095-token row
# with logit scores; at 32 every checked 4096-token variant uses 54-62 registers, no stack, on 3.6
# and 3.9. Speed at 32 warps not yet measured on hardware.
#                  rows up to (BLOCK_S)  num_warps
_GPU_ROW_WARPS = ((1024, 4), (2048, 8), (MAX_SEQUENCE_LENGTH + 1, 32))
_GPU_BAND_TILE = 4096
_MAX_BLOCK_K = 1024  # ranks written per store when filling the ranks past the candidates


def _blocks(S: int, L: int, K: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_S, BLOCK_L, BLOCK_D, BLOCK_K, num_warps) for rows of S tokens, bands of L, top K."""
    block_s, block_l = triton.next_power_of_2(S), triton.next_power_of_2(L)
    block_k = min(triton.next_power_of_2(K), _MAX_BLOCK_K)
    if triton_interpreter_on():
        return block_s, block_l, block_l, block_k, 1
    warps = next(w for limit, w in _GPU_ROW_WARPS if block_s <= limit)
    block_d = min(block_l, max(1, _GPU_BAND_TILE // block_s))
    return block_s, block_l, block_d, block_k, warps


# ----------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _side_value(x, keep, row_max, row_sum, LOGIT_SCORE: tl.constexpr):
    # value = x (logit scores), or exp(x' - max) / sum with x' = x where kept, -10000 elsewhere
    if LOGIT_SCORE:
        value = x
    else:
        value = tl.exp(tl.where(keep, x, _MASKED_C) - row_max) / row_sum
    return value


@triton.jit
def _row_stats(x, keep, valid):
    # max and sum of exp(x' - max) over the row's tokens (the lanes past S excluded)
    x = tl.where(valid, tl.where(keep, x, _MASKED_C), float("-inf"))
    row_max = tl.max(x, axis=0)
    return row_max, tl.sum(tl.where(valid, tl.exp(x - row_max), 0.0), axis=0)


@triton.jit
def _lane(x, offs, i):
    # x[i] of a row vector: that lane plus zeros, exact and NaN-preserving (a -0.0 comes back +0.0,
    # which the key does too). Not tl.max over the lane and -infs: a max drops NaN, compiled (max.f32)
    # and interpreted alike, which made a NaN logit's null score -inf and re-ranked its start's spans.
    return tl.sum(tl.where(offs == i, x, 0.0), axis=0)


@triton.jit
def _span_key(score, code):
    # key = (ord(score) << 32) - 1 - code, code = i * 2**16 + j: the contract in keys.py
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 -> +0.0
    score = tl.where(score == score, score, float("nan"))  # one NaN
    bits = score.to(tl.int32, bitcast=True)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (bits.to(tl.int64) << 32) - 1 - code


# K is not specialized: an int argument equal to 1 compiles to a constant, so top_k = 1 (the default)
# would run a variant of its own, one the sm_90 spill check does not compile (Triton 3.9's ptxas
# spills it: 8 bytes at 80 registers). K only bounds loops and offsets rows.
@triton.jit(do_not_specialize=["K"])
def _decode_spans_kernel(
    start_ptr, end_ptr, mask_ptr,  # pointers (inputs)
    out_start_ptr, out_end_ptr, out_score_ptr, null_ptr,  # pointers (outputs)
    S, L, K,  # sizes: tokens, band width (max answer length, <= S), spans per row
    stride_sb, stride_ss, stride_eb, stride_es, stride_mb, stride_ms,  # strides
    HAS_MASK: tl.constexpr, LOGIT_SCORE: tl.constexpr,  # meta
    BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    start_row = start_ptr + row * stride_sb
    end_row = end_ptr + row * stride_eb
    mask_row = mask_ptr + row * stride_mb
    offs = tl.arange(0, BLOCK_S)
    in_row = offs < S

    # 1. Row statistics. keep = in the softmax: the context, and token 0 (the null answer).
    s = tl.load(start_row + offs.to(tl.int64) * stride_ss, mask=in_row, other=0.0).to(tl.float32)
    e = tl.load(end_row + offs.to(tl.int64) * stride_es, mask=in_row, other=0.0).to(tl.float32)
    if HAS_MASK:
        ctx = tl.load(mask_row + offs.to(tl.int64) * stride_ms, mask=in_row, other=0) != 0
    else:
        ctx = in_row
    keep = ctx | (offs == 0)
    s_max, s_sum = 0.0, 1.0
    e_max, e_sum = 0.0, 1.0
    if not LOGIT_SCORE:
        s_max, s_sum = _row_stats(s, keep, in_row)
        e_max, e_sum = _row_stats(e, keep, in_row)
    a = _side_value(s, keep, s_max, s_sum, LOGIT_SCORE)  # (BLOCK_S,) start side
    b = _side_value(e, keep, e_max, e_sum, LOGIT_SCORE)  # (BLOCK_S,) end side
    a0 = _lane(a, offs, 0)
    b0 = _lane(b, offs, 0)
    if LOGIT_SCORE:
        tl.store(null_ptr + row, a0 + b0)
    else:
        tl.store(null_ptr + row, a0 * b0)

    # 2. best[i] = max over d < L of key(i, i + d), for starts i in the context.
    best = tl.full([BLOCK_S], _NO_KEY_C, dtype=tl.int64)
    num_spans = 0  # candidates in the row: the rounds stop there
    ctx_i = ctx & in_row
    for dc in range(0, tl.cdiv(L, BLOCK_D)):
        d = dc * BLOCK_D + tl.arange(0, BLOCK_D)
        j = offs[:, None] + d[None, :]  # (BLOCK_S, BLOCK_D)
        in_band = ctx_i[:, None] & (d < L)[None, :] & (j < S)
        j64 = j.to(tl.int64)
        e_j = tl.load(end_row + j64 * stride_es, mask=in_band, other=0.0).to(tl.float32)
        if HAS_MASK:
            ctx_j = tl.load(mask_row + j64 * stride_ms, mask=in_band, other=0) != 0
        else:
            ctx_j = in_band
        b_j = _side_value(e_j, ctx_j | (j == 0), e_max, e_sum, LOGIT_SCORE)
        if LOGIT_SCORE:
            score = a[:, None] + b_j
        else:
            score = a[:, None] * b_j
        keys = _span_key(score, offs.to(tl.int64)[:, None] * 65536 + j64)
        keys = tl.where(in_band & ctx_j, keys, _NO_KEY_C)
        best = tl.maximum(best, tl.max(keys, axis=1))
        num_spans += tl.sum((in_band & ctx_j).to(tl.int32))

    # 3. min(K, num_spans) rounds: emit the best remaining span, then refill its start from the
    #    rest of its band; the ranks past the candidates get (-1, -1, -inf).
    offs_l = tl.arange(0, BLOCK_L)
    out = row * K
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        empty = (offs_k >= num_spans) & (offs_k < K)
        tl.store(out_start_ptr + out + offs_k, tl.full([BLOCK_K], -1, tl.int64), mask=empty)
        tl.store(out_end_ptr + out + offs_k, tl.full([BLOCK_K], -1, tl.int64), mask=empty)
        tl.store(out_score_ptr + out + offs_k, tl.full([BLOCK_K], float("-inf"), tl.float32), mask=empty)
    for r in range(0, tl.minimum(K, num_spans)):
        top = tl.max(best, axis=0)
        found = top != _NO_KEY_C  # always true here; kept so a rank never decodes the sentinel
        hi = (top >> 32) + 1
        code = (hi << 32) - 1 - top
        i = code >> 16
        bits = hi.to(tl.int32)
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        tl.store(out_start_ptr + out + r, tl.where(found, i, -1))
        tl.store(out_end_ptr + out + r, tl.where(found, code & 0xFFFF, -1))
        tl.store(out_score_ptr + out + r, tl.where(found, bits.to(tl.float32, bitcast=True), float("-inf")))

        a_i = _lane(a, offs, i)  # bitwise the a[i] of step 2 (up to the sign of a zero): same keys
        j = i + offs_l  # (BLOCK_L,) int64
        # (an int, not `found &`: the interpreter cannot load under a scalar bool & block mask)
        in_band = (offs_l < tl.where(found, L, 0)) & (j < S)
        e_j = tl.load(end_row + j * stride_es, mask=in_band, other=0.0).to(tl.float32)
        if HAS_MASK:
            ctx_j = tl.load(mask_row + j * stride_ms, mask=in_band, other=0) != 0
        else:
            ctx_j = in_band
        b_j = _side_value(e_j, ctx_j | (j == 0), e_max, e_sum, LOGIT_SCORE)
        if LOGIT_SCORE:
            score = a_i + b_j
        else:
            score = a_i * b_j
        keys = _span_key(score, i * 65536 + j)
        keys = tl.where(in_band & ctx_j & (keys < top), keys, _NO_KEY_C)
        best = tl.where(offs == i, tl.max(keys, axis=0), best)


# ----------------------------------------------------------------------------------------------
# Launcher: same signature as the op qa_kernels::decode_spans
# ----------------------------------------------------------------------------------------------


def decode_spans(
    start_logits: Tensor,  # (B, S) float, any strides
    end_logits: Tensor,  # (B, S) float, any strides
    context_mask: Optional[Tensor],  # (B, S) bool
    max_answer_len: int,
    top_k: int,
    logit_score: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B, S = start_logits.shape
    L = min(max_answer_len, S)
    device = start_logits.device
    starts = torch.empty((B, top_k), dtype=torch.int64, device=device)
    ends = torch.empty((B, top_k), dtype=torch.int64, device=device)
    scores = torch.empty((B, top_k), dtype=torch.float32, device=device)
    null_scores = torch.empty((B,), dtype=torch.float32, device=device)
    if B == 0:
        return starts, ends, scores, null_scores
    # Triton loads torch.bool as int1 pointers; view the mask as bytes to keep loads plain.
    mask = context_mask.view(torch.uint8) if context_mask is not None else start_logits
    block_s, block_l, block_d, block_k, warps = _blocks(S, L, top_k)
    _decode_spans_kernel[(B,)](
        start_logits, end_logits, mask,
        starts, ends, scores, null_scores,
        S, L, top_k,
        *start_logits.stride(), *end_logits.stride(), *(mask.stride() if context_mask is not None else (0, 0)),
        HAS_MASK=context_mask is not None, LOGIT_SCORE=logit_score,
        BLOCK_S=block_s, BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    return starts, ends, scores, null_scores
