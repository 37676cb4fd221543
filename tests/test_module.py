"""QAHead: nn.Linear(H, 2)'s parameters and state_dict, and the function's numbers."""

from __future__ import annotations

import torch

import qa_kernels
from qa_kernels import reference
from tests.utils import TOLERANCE, assert_close


def test_state_dict_round_trips_with_linear():
    linear = torch.nn.Linear(31, 2)
    head = qa_kernels.QAHead(31)
    assert [n for n, _ in head.named_parameters()] == ["weight", "bias"]
    head.load_state_dict(linear.state_dict())
    assert torch.equal(head.weight, linear.weight) and torch.equal(head.bias, linear.bias)
    other = torch.nn.Linear(31, 2)
    other.load_state_dict(head.state_dict())
    assert torch.equal(other.weight, linear.weight)


def test_no_bias_and_factory_kwargs():
    head = qa_kernels.QAHead(16, bias=False, dtype=torch.bfloat16)
    assert head.bias is None and head.weight.dtype == torch.bfloat16
    assert set(head.state_dict()) == set(torch.nn.Linear(16, 2, bias=False).state_dict())
    assert "hidden_size=16, bias=False" in repr(head)


def test_init_matches_linear_distribution():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 2)
    torch.manual_seed(1)
    head = qa_kernels.QAHead(64)
    assert torch.equal(head.weight, linear.weight) and torch.equal(head.bias, linear.bias)


def test_from_linear_shares_parameters_and_matches(backend, device):
    linear = torch.nn.Linear(31, 2, device=device)
    head = qa_kernels.QAHead.from_linear(linear)
    assert head.weight is linear.weight and head.bias is linear.bias
    hidden = torch.randn(3, 7, 31, device=device)
    start = torch.tensor([0, -1, 9], device=device)
    end = torch.tensor([[2], [7], [3]], device=device)
    out = head(hidden, start, end)
    ref = reference.qa_head(hidden, linear.weight, linear.bias, start, end)
    tol = TOLERANCE["fp64"][torch.float32]
    for x, y, name in zip(out, ref, ("start_logits", "end_logits", "loss"), strict=True):
        assert_close(x, y, tol, name)
    out.loss.backward()
    assert linear.weight.grad is not None and linear.bias.grad is not None


def test_from_linear_without_bias(backend, device):
    head = qa_kernels.QAHead.from_linear(torch.nn.Linear(31, 2, bias=False, device=device))
    assert head.bias is None
    out = head(torch.randn(2, 5, 31, device=device))
    assert out.loss is None and out.start_logits.shape == (2, 5)
