"""decode_spans with PyTorch operators: the fallback on any device, the contract in a few vectorized
lines (every candidate of the (B, S, L) band keyed, then one top-k)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .keys import _NO_KEY, MASKED_LOGIT, span_keys, unpack_keys


def _side_values(logits: Tensor, in_softmax: Tensor, logit_score: bool) -> Tensor:
    """(B, S) float32 per-token values: the logit, or its probability over the masked row."""
    x = logits.float()
    if logit_score:
        return x
    x = torch.where(in_softmax, x, MASKED_LOGIT)
    x = torch.exp(x - x.amax(dim=1, keepdim=True))
    return x / x.sum(dim=1, keepdim=True)


def decode_spans(
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
