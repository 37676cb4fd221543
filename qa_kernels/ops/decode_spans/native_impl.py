"""decode_spans' native implementation: the C++ CPU kernel of csrc/, as
``torch.ops.qa_kernels_native.decode_spans``. The registry (``qa_kernels.backend``) loads the
extension (``qa_kernels.native``) and checks its kernel before it picks this module."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def decode_spans(
    start_logits: Tensor,  # (B, S)
    end_logits: Tensor,  # (B, S)
    context_mask: Optional[Tensor],  # (B, S) bool
    max_answer_len: int,
    top_k: int,
    logit_score: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.ops.qa_kernels_native.decode_spans(
        start_logits, end_logits, context_mask, max_answer_len, top_k, logit_score
    )
