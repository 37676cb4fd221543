"""The registered op ``qa_kernels::decode_spans`` and its fake kernel (for tracing)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...backend import implementation


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
    return impl.decode_spans(start_logits, end_logits, context_mask, max_answer_len, top_k, logit_score)


@decode_spans_op.register_fake
def _(start_logits, end_logits, context_mask, max_answer_len, top_k, logit_score):
    B = start_logits.shape[0]
    starts = start_logits.new_empty((B, top_k), dtype=torch.int64)
    return starts, torch.empty_like(starts), starts.new_empty((B, top_k), dtype=torch.float32), \
        starts.new_empty((B,), dtype=torch.float32)  # fmt: skip
