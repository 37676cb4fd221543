"""Span decoding: the best (start, end) answer spans of each row of QA logits, on the logits' device.

Layers, thin and in this order: :func:`decode_spans` (argument checks) → the registered op
``qa_kernels::decode_spans`` (``op.py``; fake kernel for tracing) → the implementation that the
registry (:mod:`qa_kernels.backend`) picks: ``triton_impl.py`` (CUDA, or CPU under the
interpreter), ``native_impl.py`` (the C++ kernel, CPU) or ``torch_impl.py`` (any device). A call
with nothing watching (no tracing, no tensor subclass, no dispatch mode) skips the op's dispatch.

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

Every implementation ranks by the same int64 key (``keys.py``), so ties break identically
everywhere; S <= 65535, since the key packs (i, j) into 32 bits.

Work: O(B * S * max_answer_len) plus a per-row top-k; no S x S tensor anywhere.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..._checks import check_int, check_tensor, describe
from ...backend import implementation, route
from .keys import MAX_SEQUENCE_LENGTH, MAX_TOP_K, SCORES
from .op import decode_spans_op

_INPUT_NAMES = ("start_logits", "end_logits", "context_mask")


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
    args = (start_logits, end_logits, context_mask, L, top_k, score == "logit")
    device_type = start_logits.device.type
    if route("decode_spans", device_type, _INPUT_NAMES, args[:3], differentiable=False) == "plain":
        return SpanOutput(*implementation("decode_spans", device_type).decode_spans(*args))
    return SpanOutput(*decode_spans_op(*args))
