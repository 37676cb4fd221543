"""qa_head, the public function: argument checks, autocast, then the registered op (``op.py``) or,
where nothing watches the call, the implementation the registry picks (``qa_kernels.backend``),
inside the op's own autograd (``op.EagerQAHead``) when there is something to differentiate."""

from __future__ import annotations

import numbers
from typing import Optional, Union

import torch
from torch import Tensor

from ..._checks import check_tensor, describe
from ...backend import implementation, route
from ...outputs import QAHeadOutput
from . import op, torch_impl

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# int64 as transformers passes them, uint8 because eager's cross-entropy takes it too, int32 for
# callers that keep their labels small. (Eager refuses int8, int16 and int32 targets.)
_POSITION_DTYPES = (torch.int64, torch.int32, torch.uint8)
_INPUT_NAMES = ("hidden", "weight", "bias", "start_positions", "end_positions", "num_items_in_batch")


def _check_float(name: str, t: Tensor) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16; got {describe(t)}")


def _check_device(name: str, t: Tensor, hidden: Tensor) -> None:
    if t.device != hidden.device:
        raise ValueError(f"{name} must be on hidden's device {hidden.device}; got {describe(t)}")


def _check_positions(name: str, positions: Tensor, hidden: Tensor) -> Tensor:
    """(B,) or (B, 1) int64/int32/uint8 on hidden's device -> a (B,) int64/int32 tensor: a view for
    int64/int32 (never a copy, never modified), a B-element int32 copy for uint8."""
    check_tensor(name, positions)
    B = hidden.shape[0]
    if positions.dtype not in _POSITION_DTYPES:
        raise TypeError(
            f"{name} must be an integer tensor of token indices, int64 (int32 and uint8 accepted); "
            f"got {describe(positions)}"
        )
    # Size by size: under torch.compile(dynamic=True) B is symbolic, and a comparison of torch.Size
    # with a tuple would not hold.
    dims = positions.dim()
    if not (dims in (1, 2) and positions.shape[0] == B and (dims == 1 or positions.shape[1] == 1)):
        raise ValueError(
            f"{name} must have shape ({B},) or ({B}, 1) to match hidden's batch of {B}; got {describe(positions)}"
        )
    _check_device(name, positions, hidden)
    positions = positions.reshape(B)
    return positions.to(torch.int32) if positions.dtype == torch.uint8 else positions


def _check_num_items(num_items_in_batch: object, hidden: Tensor) -> tuple[Optional[Tensor], Optional[float]]:
    """``(num_items tensor on hidden's device, None)``, ``(None, value)`` or ``(None, None)``."""
    if num_items_in_batch is None:
        return None, None
    if isinstance(num_items_in_batch, Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"num_items_in_batch must be a number or a one-element tensor; got {describe(num_items_in_batch)}"
            )
        if num_items_in_batch.dtype == torch.bool or num_items_in_batch.is_complex():
            raise TypeError(f"num_items_in_batch must be a real number; got {describe(num_items_in_batch)}")
        # Non-blocking only towards a GPU: a device-to-host copy could still be in flight when a CPU
        # kernel reads it.
        non_blocking = hidden.device.type == "cuda"
        return num_items_in_batch.reshape(()).to(hidden.device, non_blocking=non_blocking), None
    # Python and numpy numbers (numpy's integers and floats register as numbers.Real; bools do not).
    if isinstance(num_items_in_batch, numbers.Real) and not isinstance(num_items_in_batch, bool):
        return None, float(num_items_in_batch)
    raise TypeError(
        "num_items_in_batch must be a real number (int, float, numpy number) or a one-element tensor; "
        f"got {type(num_items_in_batch).__name__}"
    )


def qa_head(
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    bias: Optional[Tensor] = None,  # (2,)
    start_positions: Optional[Tensor] = None,  # (B,) or (B, 1)
    end_positions: Optional[Tensor] = None,  # (B,) or (B, 1)
    *,
    num_items_in_batch: Union[int, float, Tensor, None] = None,  # a number or a one-element tensor
) -> QAHeadOutput:
    """The fused extractive-QA head: ``Linear(H, 2)``, start/end split and the clamped cross-entropy.

    Computes exactly what ``qa_kernels.reference.qa_head`` (and transformers' eager head) computes,
    with no host synchronization. Training reads ``hidden`` once: the forward also accumulates the
    loss's weight gradient (an online-softmax weighted sum of hidden's rows), so the backward only
    writes ``grad_hidden`` (it reads ``hidden`` again only when the logits receive gradients too).

    Args:
        hidden: ``(B, S, H)`` float32, float16 or bfloat16, dense with any strides; the encoder's
            last hidden states.
        weight: ``(2, H)``, the ``qa_outputs.weight``; its dtype may differ from hidden's (float32
            master weights with half activations). Its gradient comes back in its own dtype.
        bias: ``(2,)`` or ``None``.
        start_positions, end_positions: ``(B,)`` or ``(B, 1)`` int64 token indices (int32 and uint8
            accepted). Clamped to ``[0, S]``: negative -> 0, ``>= S`` -> ignored. Never modified,
            and free to be refilled once the forward has returned (the backward keeps its own copy).
        num_items_in_batch: with it, each side is a sum divided by this number (a Python or numpy
            int or float, or a one-element tensor) instead of the mean over its valid rows
            (transformers' gradient accumulation fix).

    Returns:
        :class:`QAHeadOutput` ``(start_logits, end_logits, loss)``: the logits contiguous ``(B, S)``
        in hidden's dtype (under autocast, the autocast dtype, as ``nn.Linear`` gives); ``loss`` a
        float32 scalar computed in float32 whatever the input dtype (eager computes it in the
        logits' dtype without autocast; float64 when ``num_items_in_batch`` is a float64 tensor, as
        eager's division promotes it), ``None`` unless both positions are given, NaN when every
        row of a side is ignored (0 with ``num_items_in_batch``).

    Autograd (backward, and double backward with ``create_graph=True``),
    ``torch.compile(fullgraph=True)``, forward-mode AD
    (``torch.autograd.forward_ad``) and torch.func's transforms (``grad``, ``jvp``, ``vmap``,
    ``jacfwd``, ``jacrev``, ``hessian``) all give eager's derivatives: the transforms and forward
    mode run the torch implementation's operators instead of the fused kernels.

    Raises:
        TypeError / ValueError naming the argument, what it got and what is expected.
    """
    check_tensor("hidden", hidden)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be 3-D (B, S, H); got {describe(hidden)}")
    _check_float("hidden", hidden)
    S, H = hidden.shape[1:]
    if S == 0:
        raise ValueError(f"hidden must have a sequence length S >= 1; got {describe(hidden)}")
    check_tensor("weight", weight)
    if not (weight.dim() == 2 and weight.shape[0] == 2 and weight.shape[1] == H):
        raise ValueError(f"weight must have shape (2, {H}) for hidden size {H}; got {describe(weight)}")
    _check_float("weight", weight)
    _check_device("weight", weight, hidden)
    if bias is not None:
        check_tensor("bias", bias)
        if not (bias.dim() == 1 and bias.shape[0] == 2):
            raise ValueError(f"bias must have shape (2,); got {describe(bias)}")
        _check_float("bias", bias)
        _check_device("bias", bias, hidden)
    if start_positions is not None:
        start_positions = _check_positions("start_positions", start_positions, hidden)
    if end_positions is not None:
        end_positions = _check_positions("end_positions", end_positions, hidden)
    if start_positions is None or end_positions is None:  # one side only: no loss, as eager
        start_positions = end_positions = None
    num_items, num_items_value = _check_num_items(num_items_in_batch, hidden)

    device_type = hidden.device.type
    cast_dtype = None
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        cast_dtype = torch.get_autocast_dtype(device_type)

    args = (hidden, weight, bias, start_positions, end_positions, num_items, num_items_value, cast_dtype)
    how = route("qa_head", device_type, _INPUT_NAMES, args[:6], differentiable=True)
    if how == "plain":
        start_logits, end_logits, loss, *_ = implementation("qa_head", device_type).qa_head_fwd(*args, False)
    elif how == "transform":
        start_logits, end_logits, loss, *_ = torch_impl.qa_head_fwd(*args, False)
    else:
        # The weight's gradient in the forward (op.py: one pass over hidden) when it will be wanted.
        one_pass = start_positions is not None and torch.is_grad_enabled() and weight.requires_grad
        head = op.EagerQAHead.apply if how == "autograd" else op.qa_head_fwd
        start_logits, end_logits, loss, *_ = head(*args, one_pass)
    if start_positions is None:
        return QAHeadOutput(start_logits, end_logits, None)
    if num_items is not None and num_items.is_floating_point():
        # Eager divides its float32 loss by the tensor: type promotion gives a float64 loss for a
        # float64 num_items_in_batch (float32 for half and integer ones).
        loss = loss.to(torch.promote_types(loss.dtype, num_items.dtype))
    return QAHeadOutput(start_logits, end_logits, loss)
