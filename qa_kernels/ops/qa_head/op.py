"""The head's registered ops: one pair, a fake kernel for tracing, autograd.

``qa_kernels::qa_head_fwd`` computes both logits, and with labels the loss plus the per-row
logsumexp and per-side gradient scale that the backward needs; asked (``one_pass``), also the
loss's gradients with respect to the weight and the bias. ``qa_kernels::qa_head_bwd`` computes the input
gradients from those.

One pass over ``hidden`` in training. When only the loss is differentiated (transformers discards
the logits' gradients), the loss's gradient with respect to the weight is, per side ``k``,

    d loss / d weight[k] = scale_k * sum over valid rows b of (sum_s p_k[b, s] hidden[b, s] - hidden[b, y_k[b]])

with ``p_k[b] = softmax(logits_k[b])``: a softmax-weighted sum of hidden's rows, which a forward
that reads each row once can accumulate with an online softmax (a running max and a rescaled
accumulator: flash-attention's trick with one query). The bias's, ``scale_k * sum over valid rows
of (sum_s p_k[b, s] - 1)``, comes with the logsumexp. The backward then multiplies both by the
upstream gradient and only writes ``grad_hidden``, reading the (B, S) logits, not hidden; with a
frozen encoder (hidden needs no gradient) it runs no kernel at all. When the logits receive
gradients too, or for a double backward, the backward reads hidden as before (the two-pass path)
and ``grad_weight_loss`` / ``grad_bias_loss`` go unused. Each runs the implementation the registry picks
(:func:`qa_kernels.backend.implementation`); every implementation module (``*_impl.py`` here)
exposes the same two functions with the same signatures as the ops below.

Because the ops are opaque custom ops with fake kernels, ``torch.compile(fullgraph=True)`` traces
code that calls them with no graph break, and ``torch.library.opcheck`` tests the registration.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...backend import get_backend, implementation, use_backend
from . import torch_impl

# Positions and num_items enter the ops as optional tensors; `num_items_value` carries a Python
# number, so an int `num_items_in_batch` never becomes a host-to-device copy.


@torch.library.custom_op("qa_kernels::qa_head_fwd", mutates_args=())
def qa_head_fwd(
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    bias: Optional[Tensor],  # (2,)
    start_positions: Optional[Tensor],  # (B,) int32/int64
    end_positions: Optional[Tensor],  # (B,) int32/int64
    num_items: Optional[Tensor],  # () scalar tensor: sum / num_items instead of the mean
    num_items_value: Optional[float],  # the same as a Python number
    cast_dtype: Optional[torch.dtype],  # autocast dtype: inputs rounded to it, logits stored in it
    one_pass: bool,  # with labels: also compute grad_weight_loss and grad_bias_loss
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(start_logits (B, S), end_logits (B, S), loss (), lse (B, 2), scale (2,),
    grad_weight_loss (2, H), grad_bias_loss (2,))``.

    Without labels, ``loss``, ``lse`` and ``scale`` are empty float32 tensors of shape ``(0,)``.
    ``lse`` is each row's float32 logsumexp per side; ``scale[k]`` is ``1 / (2 * n_k)`` with ``n_k``
    the side's valid-row count, or ``num_items`` (the loss's derivative w.r.t. one row's NLL).
    ``grad_weight_loss`` is ``d loss / d weight`` in float32 (a side with no valid row contributes
    0), from hidden rounded to the mm dtype as the logits are; ``grad_bias_loss`` is
    ``d loss / d bias`` in float32 (0 in exact arithmetic: rounding noise, or NaN where a valid
    row's softmax is NaN, as eager's). Both are empty ``(0,)`` without labels or without ``one_pass``.
    """
    impl = implementation("qa_head", hidden.device.type)
    return impl.qa_head_fwd(
        hidden, weight, bias, start_positions, end_positions, num_items, num_items_value, cast_dtype, one_pass
    )


@qa_head_fwd.register_fake
def _(hidden, weight, bias, start_positions, end_positions, num_items, num_items_value, cast_dtype, one_pass):
    B, S, H = hidden.shape
    out_dtype = cast_dtype or hidden.dtype
    start = hidden.new_empty((B, S), dtype=out_dtype)
    end = hidden.new_empty((B, S), dtype=out_dtype)
    empty = hidden.new_empty((0,), dtype=torch.float32)
    if start_positions is None or end_positions is None:
        return start, end, empty, empty.clone(), empty.clone(), empty.clone(), empty.clone()
    loss = hidden.new_empty((), dtype=torch.float32)
    lse = hidden.new_empty((B, 2), dtype=torch.float32)
    scale = hidden.new_empty((2,), dtype=torch.float32)
    grad_weight_loss = hidden.new_empty((2, H) if one_pass else (0,), dtype=torch.float32)
    grad_bias_loss = hidden.new_empty((2,) if one_pass else (0,), dtype=torch.float32)
    return start, end, loss, lse, scale, grad_weight_loss, grad_bias_loss


@torch.library.custom_op("qa_kernels::qa_head_bwd", mutates_args=())
def qa_head_bwd(
    grad_start: Optional[Tensor],  # (B, S) upstream gradient of start_logits
    grad_end: Optional[Tensor],  # (B, S) upstream gradient of end_logits
    grad_loss: Optional[Tensor],  # () upstream gradient of loss
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    start_logits: Tensor,  # (B, S) saved forward output
    end_logits: Tensor,  # (B, S) saved forward output
    lse: Tensor,  # (B, 2) float32, or (0,) without labels
    scale: Tensor,  # (2,) float32, or (0,) without labels
    start_positions: Optional[Tensor],  # (B,)
    end_positions: Optional[Tensor],  # (B,)
    cast_dtype: Optional[torch.dtype],
    needs_grad_hidden: bool,
    needs_grad_weight: bool,
    needs_grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``(grad_hidden (B, S, H), grad_weight (2, H), grad_bias (2,) float32)``.

    A gradient that is not needed comes back as an empty tensor of shape ``(0,)`` and costs nothing.
    """
    impl = implementation("qa_head", hidden.device.type)
    return impl.qa_head_bwd(
        grad_start, grad_end, grad_loss, hidden, weight, start_logits, end_logits, lse, scale,
        start_positions, end_positions, cast_dtype,
        needs_grad_hidden, needs_grad_weight, needs_grad_bias,
    )  # fmt: skip


@qa_head_bwd.register_fake
def _(grad_start, grad_end, grad_loss, hidden, weight, start_logits, end_logits, lse, scale,
      start_positions, end_positions, cast_dtype,
      needs_grad_hidden, needs_grad_weight, needs_grad_bias):  # fmt: skip
    empty = hidden.new_empty((0,), dtype=torch.float32)
    grad_hidden = hidden.new_empty(hidden.shape) if needs_grad_hidden else empty
    grad_weight = weight.new_empty(weight.shape) if needs_grad_weight else empty.clone()
    grad_bias = hidden.new_empty((2,), dtype=torch.float32) if needs_grad_bias else empty.clone()
    return grad_hidden, grad_weight, grad_bias


def _setup_context(ctx, inputs, output):
    # Saved: what the backward reads, no more. hidden only when the weight needs its gradient (the
    # only use of it); positions as private copies of B integers, so that the caller may refill a
    # reused label buffer before the backward (eager's cross-entropy does not keep them either).
    # hidden is saved for the two-pass backward even with one_pass (whether the logits will receive
    # gradients is known only then); it is a reference, and eager's nn.Linear keeps it too.
    hidden, weight, bias, start_positions, end_positions, _, _, cast_dtype, _ = inputs
    start_logits, end_logits, _, lse, scale, grad_weight_loss, grad_bias_loss = output
    saved_hidden = hidden if ctx.needs_input_grad[1] else None  # the weight's gradient
    if start_positions is not None:
        start_positions, end_positions = start_positions.clone(), end_positions.clone()
    ctx.save_for_backward(
        saved_hidden, weight, start_logits, end_logits, lse, scale, start_positions, end_positions,
        grad_weight_loss, grad_bias_loss,
    )  # fmt: skip
    ctx.hidden_meta = (hidden.shape, hidden.dtype)
    ctx.cast_dtype = cast_dtype
    ctx.bias_dtype = None if bias is None else bias.dtype
    # In eager mode the backend in force at the forward serves its backward too, whichever thread
    # runs it (autograd's device threads do not see the forward thread's use_backend block). Traced
    # by torch.compile, this is a trace-time value: compiled ops resolve when they run instead.
    ctx.backend = get_backend()
    ctx.direct = False  # EagerQAHead sets it
    # Outputs that received no gradient come as None, not zeros: with num_items_in_batch = 0 the
    # loss's scale is infinite, and 0 * inf would put NaN into the logits' gradients.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_start, grad_end, grad_loss, _grad_lse, _grad_scale, _grad_gwl, _grad_gbl):
    hidden, weight, start_logits, end_logits, lse, scale, start_pos, end_pos, grad_weight_loss, grad_bias_loss = (
        ctx.saved_tensors
    )
    needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    if hidden is None:  # grad_weight not needed: a placeholder with hidden's shape and dtype, never read
        shape, dtype = ctx.hidden_meta
        hidden = weight.new_empty((1, 1, 1), dtype=dtype).expand(shape)
    if lse.numel() == 0:  # no labels: the loss output is an empty placeholder
        grad_loss = None
    if torch.is_grad_enabled():
        # create_graph=True (a gradient penalty, a Hessian-vector product): the backward itself must
        # be differentiable. The torch implementation's backward is, written in PyTorch operators on
        # the saved logits, whose graph leads back through this op to hidden, weight and bias; the
        # logsumexp is recomputed from them so that its own derivative is part of that graph.
        if lse.numel() > 0:
            lse = torch_impl.logsumexp(torch.stack([start_logits, end_logits], dim=1).float(), dim=-1)
        grad_hidden, grad_weight, grad_bias = torch_impl.qa_head_bwd(
            grad_start, grad_end, grad_loss, hidden, weight, start_logits, end_logits, lse, scale,
            start_pos, end_pos, ctx.cast_dtype, needs_hidden, needs_weight, needs_bias,
        )  # fmt: skip
    else:
        # One pass: only the loss is differentiated and the forward computed its weight and bias
        # gradients; the kernels then only write grad_hidden, and with hidden frozen do not run.
        one_pass = (
            needs_weight and grad_weight_loss.numel() > 0 and grad_loss is not None
            and grad_start is None and grad_end is None
        )  # fmt: skip
        grad_hidden = grad_weight = grad_bias = None
        if not one_pass or needs_hidden:
            with use_backend(ctx.backend):
                # EagerQAHead's backward calls the implementation as its forward did; the op's, the op.
                bwd = implementation("qa_head", hidden.device.type).qa_head_bwd if ctx.direct else qa_head_bwd
                grad_hidden, grad_weight, grad_bias = bwd(
                    grad_start, grad_end, grad_loss, hidden, weight, start_logits, end_logits, lse, scale,
                    start_pos, end_pos, ctx.cast_dtype,
                    needs_hidden, needs_weight and not one_pass, needs_bias and not one_pass,
                )  # fmt: skip
        if one_pass:
            g = grad_loss.float()
            grad_weight = (g * grad_weight_loss).to(weight.dtype)
            grad_bias = g * grad_bias_loss
    return (
        grad_hidden if needs_hidden else None,
        grad_weight if needs_weight else None,
        grad_bias.to(ctx.bias_dtype) if needs_bias else None,
        None, None, None, None, None, None,
    )  # fmt: skip


torch.library.register_autograd("qa_kernels::qa_head_fwd", _backward, setup_context=_setup_context)


class EagerQAHead(torch.autograd.Function):
    """``qa_head_fwd`` for eager autograd on plain tensors (``backend.route``'s ``"autograd"``): the
    implementation the registry picks, called directly, with the op's own ``setup_context`` and
    backward, so the same tensors are saved and the same gradients come back, without the custom
    op's Python dispatch (see ``backend.route`` for what that saves). torch.compile, tensor
    subclasses, dispatch and function modes, and torch.func's transforms see the registered op."""

    # forward(ctx, ...) rather than forward(...) with setup_context: Function.apply binds a
    # setup_context Function's arguments through inspect.signature at every call (~40 us).
    @staticmethod
    def forward(ctx, *inputs):  # qa_head_fwd's arguments
        output = implementation("qa_head", inputs[0].device.type).qa_head_fwd(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.direct = True
        return output

    backward = staticmethod(_backward)
