"""The eager PyTorch reference: the contract every implementation is tested against.

Written the way transformers computes the head (``BertForQuestionAnswering.forward`` and
``transformers.loss.loss_utils.ForQuestionAnsweringLoss``), with one documented difference: the
cross-entropy runs on float32 copies of the logits, so the loss is float32 whatever the input dtype.
That is exactly what eager computes under autocast (``cross_entropy`` autocasts to float32); without
autocast a bf16/fp16 model would compute its loss in bf16/fp16, less accurately.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ...outputs import QAHeadOutput

NumItems = Union[int, float, torch.Tensor, None]


def _side_loss(
    logits: torch.Tensor,  # (B, S)
    positions: torch.Tensor,  # (B,) or (B, 1)
    num_items_in_batch: NumItems,
) -> torch.Tensor:
    if positions.dim() > 1:
        positions = positions.squeeze(-1)
    ignored_index = logits.size(1)
    # Out of place: eager's transformers models that use `clamp_` modify the caller's tensor.
    positions = positions.to(logits.device).long().clamp(0, ignored_index)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(logits.float(), positions, ignore_index=ignored_index, reduction=reduction)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def qa_head(
    hidden: torch.Tensor,  # (B, S, H)
    weight: torch.Tensor,  # (2, H)
    bias: Optional[torch.Tensor] = None,  # (2,)
    start_positions: Optional[torch.Tensor] = None,  # (B,) or (B, 1), integer
    end_positions: Optional[torch.Tensor] = None,  # (B,) or (B, 1), integer
    *,
    num_items_in_batch: NumItems = None,
) -> QAHeadOutput:
    """Eager QA head: ``Linear(H, 2)``, start/end split, clamped cross-entropy averaged over sides.

    Positions are clamped to ``[0, S]``: negative positions train towards token 0, positions
    ``>= S`` are ignored. Each side averages over its own non-ignored rows (``sum / n`` with
    ``num_items_in_batch``); one missing side gives ``loss=None``; all rows of a side ignored gives
    NaN (0 with ``num_items_in_batch``). The caller's tensors are never modified.
    """
    logits = F.linear(hidden, weight, bias)  # (B, S, 2)
    start_logits, end_logits = logits.split(1, dim=-1)
    start_logits = start_logits.squeeze(-1).contiguous()
    end_logits = end_logits.squeeze(-1).contiguous()
    loss = None
    if start_positions is not None and end_positions is not None:
        start_loss = _side_loss(start_logits, start_positions, num_items_in_batch)
        end_loss = _side_loss(end_logits, end_positions, num_items_in_batch)
        loss = (start_loss + end_loss) / 2
    return QAHeadOutput(start_logits, end_logits, loss)
