"""Span decoding: the best (start, end) answer spans of each row of QA logits, on the logits' device.

Layers, thin and in this order: :func:`decode_spans` (argument checks) → the registered op
``qa_kernels::decode_spans`` (fake kernel for tracing) → the implementation that
:mod:`qa_kernels.backend`'s registry picks: the Triton kernel (``triton/spans.py``; CUDA, or CPU
under the interpreter), the native C++ kernel (``csrc/spans.cpp``; CPU), or the vectorized PyTorch
implementation below.

The contract (every implementation computes exactly this; float32 math throughout):
  candidates  (i, j) with i <= j < i + max_answer_len, j < S, context[i] and context[j]
  score       "logit": start[i] + end[j]               (the examples' postprocess_qa_predictions)
              "prob":  p_start[i] * p_end[j], p = exp(x - max x) / sum exp(x - max x) over the row,
                       x = logit where context or token 0, -10000 elsewhere (transformers'
                       select_starts_ends: its pipelines keep the first token (CLS) in the softmax
                       so that the null answer has a probability, and drop it from the candidates)
  null score  score of (0, 0), context or not: p_start[0] * p_end[0], or start[0] + end[0]
  order       score descending; ties: lower start, then lower end. Ranks with no candidate left:
              start = end = -1, score = -inf.

Every implementation ranks by the same int64 key, so ties break identically everywhere:
  key(i, j) = (ord(score) << 32) - 1 - (i * 2**16 + j)
where ord maps float32 bits to int32 preserving order (negative floats have their 31 low bits
flipped; -0.0 and NaN are first made +0.0 and the canonical NaN). A larger key is a better span.
The (i, j) code takes 32 bits, hence S <= 65535; no span ever gets _NO_KEY.

Work: O(B * S * max_answer_len) plus a per-row top-k; no S x S tensor anywhere.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._checks import check_int, check_tensor, describe
from ._span_constants import _NO_KEY, MASKED_LOGIT, MAX_SEQUENCE_LENGTH, MAX_TOP_K, SCORES
from .backend import implementation


class SpanOutput(NamedTuple):
    """What :func:`decode_spans` returns; every tensor is on the logits' device.

    Attributes:
        starts: ``(B, top_k)`` int64 token index of each span's first token, ``-1`` for ranks with no
            candidate left.
        ends: ``(B, top_k)`` int64 token index of each span's last token (inclusive), ``-1`` likewise.
        scores: ``(B, top_k)`` float32, descending along each row; ``-inf`` for ranks with no candidate.
        null_scores: ``(B,)`` float32 score of the null (no-answer) span ``(0, 0)``: the first token's
            start x end probability (``score="prob"``, as transformers' ``handle_impossible_answer``)
            or its start + end logit (``score="logit"``, as the SQuAD v2 examples).
    """

    starts: Tensor
    ends: Tensor
    scores: Tensor
    null_scores: Tensor


# ----------------------------------------------------------------------------------------------
# The ranking key (shared by the torch implementation and, written again in Triton, the kernel)
# ----------------------------------------------------------------------------------------------


def span_keys(scores: Tensor, codes: Tensor) -> Tensor:
    """int64 keys, larger = better: ``(ord(score) << 32) - 1 - code``, code = i * 2**16 + j.

    ``scores`` float32 and ``codes`` int64 of the same (broadcastable) shape.
    """
    scores = torch.where(scores == 0, 0.0, scores)  # -0.0 -> +0.0
    scores = torch.where(scores.isnan(), float("nan"), scores)  # one NaN
    bits = scores.contiguous().view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip magnitude bits
    return (bits.to(torch.int64) << 32) - 1 - codes


def unpack_keys(keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(starts, ends, scores)`` from keys; ``_NO_KEY`` gives ``(-1, -1, -inf)``."""
    hi = (keys >> 32) + 1
    codes = (hi << 32) - 1 - keys
    bits = hi.to(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    scores = bits.view(torch.float32)
    found = keys != _NO_KEY
    starts = torch.where(found, codes >> 16, -1)
    ends = torch.where(found, codes & 0xFFFF, -1)
    return starts, ends, torch.where(found, scores, float("-inf"))


# ----------------------------------------------------------------------------------------------
# The plain PyTorch implementation (CPU fallback; the semantics in a few vectorized lines)
# ----------------------------------------------------------------------------------------------


def _side_values(logits: Tensor, in_softmax: Tensor, logit_score: bool) -> Tensor:
    """(B, S) float32 per-token values: the logit, or its probability over the masked row."""
    x = logits.float()
    if logit_score:
        return x
    x = torch.where(in_softmax, x, MASKED_LOGIT)
    x = torch.exp(x - x.amax(dim=1, keepdim=True))
    return x / x.sum(dim=1, keepdim=True)


def decode_spans_torch(
    start_logits: Tensor,  # (B, S) float
    end_logits: Tensor,  # (B, S) float
    context_mask: Optional[Tensor],  # (B, S) bool
    max_answer_len: int,
    top_k: int,
    logit_score: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every candidate of the (B, S, L) band, L = min(max_answer_len, S), keyed, then a top-k."""
    B, S = start_logits.shape
    device = start_logits.device
    L = min(max_answer_len, S)
    context = torch.ones((B, S), dtype=torch.bool, device=device) if context_mask is None else context_mask
    in_softmax = context.clone()
    in_softmax[:, 0] = True
    a = _side_values(start_logits, in_softmax, logit_score)  # (B, S) start side
    b = _side_values(end_logits, in_softmax, logit_score)  # (B, S) end side
    null_scores = a[:, 0] + b[:, 0] if logit_score else a[:, 0] * b[:, 0]

    # Band of ends j = i + d, d < L: pad S with L - 1 columns that are never candidates.
    b_band = torch.nn.functional.pad(b, (0, L - 1)).unfold(1, L, 1)  # (B, S, L)
    ctx_band = torch.nn.functional.pad(context, (0, L - 1)).unfold(1, L, 1)  # (B, S, L)
    i = torch.arange(S, device=device)[:, None]
    j = i + torch.arange(L, device=device)[None, :]  # (S, L)
    valid = context[:, :, None] & ctx_band & (j < S)
    scores = a[:, :, None] + b_band if logit_score else a[:, :, None] * b_band
    keys = torch.where(valid, span_keys(scores, (i << 16) + j), _NO_KEY).view(B, S * L)
    k = min(top_k, S * L)
    top = keys.topk(k, dim=1, sorted=True).values if B > 0 else keys[:, :k]
    if k < top_k:
        top = torch.nn.functional.pad(top, (0, top_k - k), value=_NO_KEY)
    starts, ends, top_scores = unpack_keys(top)
    return starts, ends, top_scores, null_scores


# ----------------------------------------------------------------------------------------------
# The registered op and its dispatch
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("qa_kernels::decode_spans", mutates_args=())
def decode_spans_op(
    start_logits: Tensor,  # (B, S) float
    end_logits: Tensor,  # (B, S) float
    context_mask: Optional[Tensor],  # (B, S) bool
    max_answer_len: int,
    top_k: int,
    logit_score: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(starts (B, K) int64, ends (B, K) int64, scores (B, K) float32, null (B,) float32)``."""
    impl = implementation("decode_spans", start_logits.device.type)
    return impl(start_logits, end_logits, context_mask, max_answer_len, top_k, logit_score)


@decode_spans_op.register_fake
def _(start_logits, end_logits, context_mask, max_answer_len, top_k, logit_score):
    B = start_logits.shape[0]
    starts = start_logits.new_empty((B, top_k), dtype=torch.int64)
    return starts, torch.empty_like(starts), starts.new_empty((B, top_k), dtype=torch.float32), \
        starts.new_empty((B,), dtype=torch.float32)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _check_logits(name: str, t: object) -> Tensor:
    t = check_tensor(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (B, S); got {describe(t)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got {describe(t)}")
    return t


def decode_spans(
    start_logits: Tensor,  # (B, S)
    end_logits: Tensor,  # (B, S)
    *,
    context_mask: Optional[Tensor] = None,  # (B, S) bool or 0/1
    max_answer_len: int = 15,
    top_k: int = 1,
    score: str = "prob",
) -> SpanOutput:
    """The ``top_k`` best answer spans of each row, computed where the logits are (no host copy).

    Args:
        start_logits: ``(B, S)`` any float dtype, CPU or CUDA (the math is float32).
        end_logits: ``(B, S)`` same shape and device.
        context_mask: ``(B, S)`` bool or 0/1: where a token may be part of an answer (for a
            question-first tokenizer, ``sequence_ids == 1``). ``None``: everywhere.
        max_answer_len: a span covers at most this many tokens: ``i <= j < i + max_answer_len``.
        top_k: spans per row: at most ``S * min(max_answer_len, S)`` (the spans a row holds), or
            ``MAX_TOP_K`` = 65535 where that is larger (the ranks past a row's spans are padding).
        score: ``"prob"``: ``p_start[i] * p_end[j]``, probabilities over the row with the tokens outside
            the context (except the first) set to -10000, exactly as transformers'
            ``select_starts_ends``; ``"logit"``: ``start[i] + end[j]``, as the SQuAD examples'
            ``postprocess_qa_predictions``.

    Returns:
        :class:`SpanOutput` ``(starts, ends, scores, null_scores)``: ``(B, top_k)`` int64, int64,
        float32 sorted by score (ties: lower start, then lower end; ranks with no candidate left:
        ``-1, -1, -inf``), and the ``(B,)`` float32 null score of span ``(0, 0)``. Not
        differentiable: the outputs carry no autograd history.

    Raises:
        TypeError / ValueError naming the argument: logits not 2-D float tensors, shapes or devices
        that differ, S = 0 or S > 65535, ``max_answer_len`` or ``top_k`` not an int >= 1, ``top_k``
        above both ``S * min(max_answer_len, S)`` and ``MAX_TOP_K``, an unknown
        ``score``, a ``context_mask`` of another shape or device.
    """
    _check_logits("start_logits", start_logits)
    _check_logits("end_logits", end_logits)
    if start_logits.shape != end_logits.shape:
        raise ValueError(
            f"start_logits and end_logits must have the same shape (B, S); got {tuple(start_logits.shape)} "
            f"and {tuple(end_logits.shape)}"
        )
    if end_logits.device != start_logits.device:
        raise ValueError(f"end_logits must be on start_logits' device {start_logits.device}; got {end_logits.device}")
    S = start_logits.shape[1]
    if S < 1:
        raise ValueError(f"start_logits must have at least one token (S >= 1); got {describe(start_logits)}")
    if S > MAX_SEQUENCE_LENGTH:
        raise ValueError(f"decode_spans supports S <= {MAX_SEQUENCE_LENGTH} tokens per row; got S = {S}")
    max_answer_len = check_int("max_answer_len", max_answer_len, low=1)
    top_k = check_int("top_k", top_k, low=1)
    L = min(max_answer_len, S)
    top_k_limit = max(S * L, MAX_TOP_K)
    if top_k > top_k_limit:  # an absurd top_k would become a (B, top_k) allocation
        raise ValueError(
            f"top_k must be <= {top_k_limit}: the most spans a row holds, S * min(max_answer_len, S) "
            f"= {S} * {L} = {S * L}, or {MAX_TOP_K} where that is larger; got top_k = {top_k}"
        )
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}; got {score!r}")
    if context_mask is not None:
        if not isinstance(context_mask, Tensor):
            raise TypeError(f"context_mask must be a torch.Tensor or None; got {type(context_mask).__name__}")
        if context_mask.shape != start_logits.shape:
            raise ValueError(
                f"context_mask must have the logits' shape {tuple(start_logits.shape)}; got {describe(context_mask)}"
            )
        if context_mask.device != start_logits.device:
            raise ValueError(
                f"context_mask must be on the logits' device {start_logits.device}; got {describe(context_mask)}"
            )
        if context_mask.dtype != torch.bool:
            context_mask = context_mask != 0
    start_logits, end_logits = start_logits.detach(), end_logits.detach()  # a ranking: no gradient
    return SpanOutput(*decode_spans_op(start_logits, end_logits, context_mask, L, top_k, score == "logit"))
