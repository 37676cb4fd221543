"""Output types shared by every implementation of the QA head."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class QAHeadOutput(NamedTuple):
    """What :func:`qa_kernels.qa_head` and :class:`qa_kernels.QAHead` return.

    Attributes:
        start_logits: ``(B, S)`` contiguous, in hidden's dtype (the autocast dtype under autocast).
        end_logits: ``(B, S)`` contiguous, same dtype as ``start_logits``.
        loss: float32 scalar, or ``None`` when either position tensor is missing.
    """

    start_logits: torch.Tensor
    end_logits: torch.Tensor
    loss: Optional[torch.Tensor]
