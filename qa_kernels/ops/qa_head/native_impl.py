"""The head's native implementation: the C++ kernels of csrc/ (CPU; CUDA in a CUDA build), as
``torch.ops.qa_kernels_native.qa_head_fwd`` / ``qa_head_bwd``. The registry (``qa_kernels.backend``)
loads the extension (``qa_kernels.native``) and checks its kernels for the device before it picks
this module."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def qa_head_fwd(
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    bias: Optional[Tensor],  # (2,)
    start_positions: Optional[Tensor],  # (B,) int32/int64
    end_positions: Optional[Tensor],  # (B,) int32/int64
    num_items: Optional[Tensor],  # ()
    num_items_value: Optional[float],
    cast_dtype: Optional[torch.dtype],
    one_pass: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return torch.ops.qa_kernels_native.qa_head_fwd(
        hidden, weight, bias, start_positions, end_positions, num_items, num_items_value, cast_dtype, one_pass
    )


def qa_head_bwd(
    grad_start: Optional[Tensor],  # (B, S)
    grad_end: Optional[Tensor],  # (B, S)
    grad_loss: Optional[Tensor],  # ()
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    start_logits: Tensor,  # (B, S)
    end_logits: Tensor,  # (B, S)
    lse: Tensor,  # (B, 2) float32, or (0,)
    scale: Tensor,  # (2,) float32, or (0,)
    start_positions: Optional[Tensor],  # (B,)
    end_positions: Optional[Tensor],  # (B,)
    cast_dtype: Optional[torch.dtype],
    needs_grad_hidden: bool,
    needs_grad_weight: bool,
    needs_grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.qa_kernels_native.qa_head_bwd(
        grad_start, grad_end, grad_loss, hidden, weight, start_logits, end_logits, lse, scale,
        start_positions, end_positions, cast_dtype,
        needs_grad_hidden, needs_grad_weight, needs_grad_bias,
    )  # fmt: skip
