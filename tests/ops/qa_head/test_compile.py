"""The registered ops: torch.library.opcheck, and torch.compile(fullgraph=True) with no graph break."""

from __future__ import annotations

import pytest
import torch

import qa_kernels
from qa_kernels import reference
from qa_kernels.ops.qa_head import op as head_op
from tests.utils import TOLERANCE, assert_close


def _fwd_args(device, labels=True, bias=True, num_items=None, one_pass=False):
    hidden = torch.randn(3, 7, 31, device=device, requires_grad=True)
    weight = torch.randn(2, 31, device=device, requires_grad=True)
    b = torch.randn(2, device=device, requires_grad=True) if bias else None
    start = torch.tensor([0, -1, 9], device=device) if labels else None
    end = torch.tensor([2, 7, 3], device=device) if labels else None
    num_items_t = torch.tensor(5.0, device=device) if num_items == "tensor" else None
    num_items_v = 5.0 if num_items == "value" else None
    return (hidden, weight, b, start, end, num_items_t, num_items_v, None, one_pass)


@pytest.mark.parametrize(
    "labels,bias,num_items,one_pass",
    [
        (True, True, None, False),
        (False, True, None, False),
        (True, False, "tensor", False),
        (True, True, "value", False),
        (True, True, None, True),
        (False, True, None, True),
        (True, False, "tensor", True),
    ],
    ids=[
        "labels",
        "no_labels",
        "nobias_num_items_tensor",
        "num_items_value",
        "one_pass",
        "one_pass_no_labels",
        "one_pass_nobias_num_items_tensor",
    ],
)
def test_opcheck(backend, device, labels, bias, num_items, one_pass):
    torch.library.opcheck(head_op.qa_head_fwd, _fwd_args(device, labels, bias, num_items, one_pass))


@pytest.mark.parametrize("weight_layout", ["contiguous", "transposed"])
def test_opcheck_backward_op(backend, device, weight_layout):
    hidden, weight, b, start, end, *_ = _fwd_args(device)
    if weight_layout == "transposed":  # (H, 2) storage seen as (2, H), as a tied or transposed weight
        weight = weight.detach().t().contiguous().t()
    with torch.no_grad():
        s, e, _, lse, scale, *_ = head_op.qa_head_fwd(hidden, weight, b, start, end, None, None, None, False)
    args = (torch.randn(3, 7, device=device), None, torch.tensor(0.7, device=device), hidden.detach(),
            weight.detach(), s, e, lse, scale, start, end, None, True, True, True)  # fmt: skip
    torch.library.opcheck(head_op.qa_head_bwd, args)


def _train_step(hidden, weight, bias, start, end):
    out = qa_kernels.qa_head(hidden, weight, bias, start, end)
    return out.loss * 2 + out.start_logits.square().mean(), out.end_logits


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend, device, compiler):
    """fullgraph=True fails on any graph break, so this also proves the op traces cleanly."""
    torch._dynamo.reset()
    compiled = torch.compile(_train_step, fullgraph=True, backend=compiler)
    hidden, weight, b, start, end, *_ = _fwd_args(device)
    leaves = [hidden, weight, b]
    value, end_logits = compiled(hidden, weight, b, start, end)
    grads = torch.autograd.grad(value, leaves)
    ref = reference.qa_head(hidden, weight, b, start, end)
    ref_value = ref.loss * 2 + ref.start_logits.square().mean()
    ref_grads = torch.autograd.grad(ref_value, leaves)
    tol = TOLERANCE["fp64"][torch.float32]
    assert_close(value, ref_value, tol, "objective")
    assert_close(end_logits, ref.end_logits, tol, "end_logits")
    for x, y, name in zip(grads, ref_grads, ("hidden", "weight", "bias"), strict=True):
        assert_close(x, y, tol, f"grad_{name}")


def test_compile_counts_no_graph_break(device):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(_train_step, backend=counter)
    hidden, weight, b, start, end, *_ = _fwd_args(device)
    compiled(hidden, weight, b, start, end)
    assert counter.frame_count == 1
    assert counter.op_count >= 1
