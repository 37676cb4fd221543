"""The ops written with PyTorch operators: the fallback on any device (and CPU's default until the
native extension is built). Same math and rounding points as the Triton kernels, no fusion.

:func:`qa_head_fwd` is also what forward-mode AD and torch.func's transforms differentiate (see
``api.py`` and ``qa_kernels.backend.route``), so it uses only operators that have forward-mode and vmap rules:
no in-place writes into fresh buffers, no data-dependent Python branches."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _mm_dtype(hidden: Tensor, weight: Tensor, cast_dtype: Optional[torch.dtype]) -> torch.dtype:
    """The dtype the projection multiplies in (accumulation is float32 in every case)."""
    if cast_dtype is not None:  # autocast: nn.Linear casts hidden, weight and bias
        return cast_dtype
    return hidden.dtype if weight.dtype == hidden.dtype else torch.float32


def _targets(positions: Tensor, S: int) -> tuple[Tensor, Tensor]:
    """Clamped targets (B,) int64 and their validity: negative -> 0, >= S -> ignored (== S)."""
    targets = positions.long().clamp(0, S)
    return targets, targets != S


def logsumexp(x: Tensor, dim: int) -> Tensor:
    """``max + log(sum(exp(x - max)))``, as eager's log-softmax and the kernels compute it: a +inf
    entry gives NaN (inf - inf), where ``torch.logsumexp`` special-cases it to +inf and the loss of
    a row with a +inf logit would come out +inf instead of eager's NaN."""
    m = x.amax(dim=dim, keepdim=True).detach()  # the shift cancels in exact arithmetic
    return (m + (x - m).exp().sum(dim=dim, keepdim=True).log()).squeeze(dim)


def qa_head_fwd(hidden, weight, bias, start_positions, end_positions, num_items, num_items_value, cast_dtype, one_pass):
    S = hidden.shape[1]
    out_dtype = cast_dtype or hidden.dtype
    mm = _mm_dtype(hidden, weight, cast_dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        logits = F.linear(hidden.to(mm), weight.to(mm), None if bias is None else bias.to(mm))
    # Fresh (B, S) outputs (copy=True): a custom op's outputs may not alias each other or an input.
    start = logits[..., 0].to(out_dtype, memory_format=torch.contiguous_format, copy=True)
    end = logits[..., 1].to(out_dtype, memory_format=torch.contiguous_format, copy=True)
    if start_positions is None or end_positions is None:
        empty = hidden.new_empty((0,), dtype=torch.float32)
        return start, end, empty, empty.clone(), empty.clone(), empty.clone(), empty.clone()

    x = torch.stack([start, end], dim=1).float()  # (B, 2, S), the stored (rounded) logits
    lse = logsumexp(x, dim=-1)  # (B, 2)
    targets, valid = _targets(torch.stack([start_positions, end_positions], dim=1), S)
    x_target = x.gather(2, targets.clamp(max=S - 1).unsqueeze(-1)).squeeze(-1)  # (B, 2)
    nll_sum = torch.where(valid, lse - x_target, 0.0).sum(dim=0)  # (2,)
    if num_items is not None:
        denom = num_items.to(torch.float32).expand(2)
    elif num_items_value is not None:
        denom = torch.full((2,), num_items_value, dtype=torch.float32, device=hidden.device)
    else:
        denom = valid.sum(dim=0).to(torch.float32)  # 0 valid rows -> 0/0 = NaN, as eager
    loss = (nll_sum / denom).sum() / 2
    scale = 0.5 / denom
    lse = lse.contiguous()
    if one_pass:
        gwl = grad_weight_loss(hidden, weight, cast_dtype, start, end, lse, scale, start_positions, end_positions)
        gbl = grad_bias_loss(start, end, lse, scale, start_positions, end_positions)
    else:
        gwl, gbl = hidden.new_empty((0,), dtype=torch.float32), hidden.new_empty((0,), dtype=torch.float32)
    return start, end, loss, lse, scale, gwl, gbl


def grad_weight_loss(
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    cast_dtype: Optional[torch.dtype],
    start_logits: Tensor,  # (B, S), as stored
    end_logits: Tensor,  # (B, S)
    lse: Tensor,  # (B, 2) float32
    scale: Tensor,  # (2,) float32
    start_positions: Tensor,  # (B,)
    end_positions: Tensor,  # (B,)
) -> Tensor:
    """``d loss / d weight`` (2, H) float32, for an upstream gradient of 1:
    ``scale_k * sum over valid rows b of (sum_s p_k[b, s] h[b, s] - h[b, y_k[b]])``, with ``p_k[b]``
    the softmax of the stored logits and ``h`` hidden rounded to the mm dtype. The fused kernels
    accumulate the softmax-weighted sum in their one pass over hidden; here it is plain."""
    B, S, H = hidden.shape
    x = torch.stack([start_logits, end_logits], dim=1).float()  # (B, 2, S)
    targets, valid = _targets(torch.stack([start_positions, end_positions], dim=1), S)
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 products, as the kernels'
        h = hidden.to(_mm_dtype(hidden, weight, cast_dtype)).float()  # (B, S, H)
        p = torch.exp(x - lse.unsqueeze(-1))  # (B, 2, S)
        weighted = torch.einsum("bks,bsh->bkh", p, h)  # (B, 2, H): sum_s p h
        at_target = h.gather(1, targets.clamp(max=S - 1).unsqueeze(-1).expand(B, 2, H))  # (B, 2, H)
        # Zeroed on ignored rows before the scale (a side with no valid row has an infinite scale).
        per_row = torch.where(valid.unsqueeze(-1), weighted - at_target, 0.0)
        coef = torch.where(valid.any(dim=0), scale, 0.0)  # (2,)
        return per_row.sum(dim=0) * coef.unsqueeze(-1)


def grad_bias_loss(
    start_logits: Tensor,  # (B, S), as stored
    end_logits: Tensor,  # (B, S)
    lse: Tensor,  # (B, 2) float32
    scale: Tensor,  # (2,) float32
    start_positions: Tensor,  # (B,)
    end_positions: Tensor,  # (B,)
) -> Tensor:
    """``d loss / d bias`` (2,) float32, for an upstream gradient of 1:
    ``scale_k * sum over valid rows b of (sum_s p_k[b, s] - 1)``. The bias shifts every logit of a
    side alike, which its softmax cancels: 0 in exact arithmetic, float32 rounding noise here as in
    eager, NaN where a valid row's softmax is (a +inf or NaN logit). The kernels take
    ``sum_s p_k[b, s]`` from their logsumexp's own running sum."""
    S = start_logits.shape[1]
    x = torch.stack([start_logits, end_logits], dim=1).float()  # (B, 2, S)
    _, valid = _targets(torch.stack([start_positions, end_positions], dim=1), S)
    per_row = torch.where(valid, torch.exp(x - lse.unsqueeze(-1)).sum(dim=-1) - 1, 0.0)  # (B, 2)
    return per_row.sum(dim=0) * torch.where(valid.any(dim=0), scale, 0.0)


def qa_head_bwd(
    grad_start, grad_end, grad_loss, hidden, weight, start_logits, end_logits, lse, scale,
    start_positions, end_positions, cast_dtype,
    needs_grad_hidden, needs_grad_weight, needs_grad_bias,
):  # fmt: skip
    B, S, H = hidden.shape
    mm = _mm_dtype(hidden, weight, cast_dtype)
    # d_logits[b, s, k] = grad_logits_k + grad_loss * scale_k * (softmax_k[b, s] - onehot(target)),
    # zero on ignored rows (their scale may be inf when a side has no valid row).
    d = torch.zeros((B, 2, S), dtype=torch.float32, device=hidden.device)
    if grad_loss is not None:
        x = torch.stack([start_logits, end_logits], dim=1).float()
        targets, valid = _targets(torch.stack([start_positions, end_positions], dim=1), S)
        p = torch.exp(x - lse.unsqueeze(-1))
        p = p - F.one_hot(targets, S + 1)[..., :S].to(p.dtype)
        # The coefficient is zeroed on ignored rows BEFORE the product, not only masked after it: a
        # side with no valid row has an infinite scale, and a double backward through p * inf would
        # put 0 * inf = NaN into the second derivatives.
        coef = torch.where(valid, (scale * grad_loss.float()).view(1, 2), 0.0)  # (B, 2)
        d = torch.where(valid.unsqueeze(-1), p * coef.unsqueeze(-1), 0.0)
    if grad_start is not None:
        d[:, 0] += grad_start.float()
    if grad_end is not None:
        d[:, 1] += grad_end.float()
    d = d.transpose(1, 2)  # (B, S, 2) float32

    empty = hidden.new_empty((0,), dtype=torch.float32)
    grad_hidden, grad_weight, grad_bias = empty, empty.clone(), empty.clone()
    with torch.autocast(hidden.device.type, enabled=False):
        if needs_grad_hidden:
            grad_hidden = (d @ weight.to(mm).float()).to(hidden.dtype)
        if needs_grad_weight:
            h = hidden.to(mm).reshape(B * S, H).float()
            grad_weight = (d.reshape(B * S, 2).t() @ h).to(weight.dtype)
        if needs_grad_bias:
            grad_bias = d.sum(dim=(0, 1))
    return grad_hidden, grad_weight, grad_bias
