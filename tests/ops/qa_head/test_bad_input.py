"""Bad input: a TypeError / ValueError that names the argument, what it got and what is expected."""

from __future__ import annotations

import pytest
import torch

import qa_kernels


def good(device="cpu"):
    return {
        "hidden": torch.randn(3, 7, 31, device=device),
        "weight": torch.randn(2, 31, device=device),
        "bias": torch.randn(2, device=device),
        "start_positions": torch.tensor([0, 1, 2], device=device),
        "end_positions": torch.tensor([1, 2, 3], device=device),
    }


CASES = [
    # (what changes, error type, message fragment)
    ({"hidden": torch.randn(3, 7)}, ValueError, r"hidden must be 3-D \(B, S, H\); got shape \(3, 7\)"),
    ({"hidden": torch.randn(3, 7, 31, 2)}, ValueError, "hidden must be 3-D"),
    ({"hidden": [[1.0]]}, TypeError, "hidden must be a torch.Tensor; got list"),
    (
        {"hidden": torch.randn(3, 7, 31).double()},
        TypeError,
        "hidden must be float32, float16 or bfloat16; got .*float64",
    ),
    ({"hidden": torch.randn(3, 0, 31)}, ValueError, r"sequence length S >= 1; got shape \(3, 0, 31\)"),
    (
        {"weight": torch.randn(31, 2)},
        ValueError,
        r"weight must have shape \(2, 31\) for hidden size 31; got shape \(31, 2\)",
    ),
    ({"weight": torch.randn(3, 31)}, ValueError, r"weight must have shape \(2, 31\)"),
    ({"weight": torch.randint(0, 3, (2, 31))}, TypeError, "weight must be float32, float16 or bfloat16"),
    ({"bias": torch.randn(3)}, ValueError, r"bias must have shape \(2,\); got shape \(3,\)"),
    ({"bias": torch.randn(1, 2)}, ValueError, r"bias must have shape \(2,\)"),
    (
        {"start_positions": torch.tensor([0.0, 1.0, 2.0])},
        TypeError,
        "start_positions must be an integer tensor of token indices, int64 .*float32",
    ),
    (
        {"end_positions": torch.tensor([True, False, True])},
        TypeError,
        "end_positions must be an integer tensor .*bool",
    ),
    (
        {"start_positions": torch.tensor([0, 1])},
        ValueError,
        r"start_positions must have shape \(3,\) or \(3, 1\) to match hidden's batch of 3; got shape \(2,\)",
    ),
    (
        {"end_positions": torch.zeros(3, 2, dtype=torch.long)},
        ValueError,
        r"end_positions must have shape \(3,\) or \(3, 1\)",
    ),
    ({"start_positions": 3}, TypeError, "start_positions must be a torch.Tensor; got int"),
    (
        {"weight": torch.randn(2, 31, device="meta")},
        ValueError,
        "weight must be on hidden's device cpu; got .*device meta",
    ),
    (
        {"end_positions": torch.tensor([1, 2, 3], device="meta")},
        ValueError,
        "end_positions must be on hidden's device",
    ),
]


@pytest.mark.parametrize("change,error,message", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input_raises_naming_the_argument(change, error, message):
    kwargs = {**good(), **change}
    with pytest.raises(error, match=message):
        qa_kernels.qa_head(**kwargs)


@pytest.mark.parametrize(
    "num_items,error,message",
    [
        (torch.tensor([1, 2]), ValueError, "num_items_in_batch must be a number or a one-element tensor"),
        ("4", TypeError, r"num_items_in_batch must be a real number \(int, float, numpy number\) or a one-.*got str"),
        (True, TypeError, "got bool"),
        (torch.tensor(True), TypeError, "num_items_in_batch must be a real number; got .*bool"),
    ],
)
def test_bad_num_items(num_items, error, message):
    with pytest.raises(error, match=message):
        qa_kernels.qa_head(**good(), num_items_in_batch=num_items)


def test_module_rejects_bad_hidden_size_and_non_qa_linear():
    with pytest.raises(ValueError, match="hidden_size must be a positive int; got 0"):
        qa_kernels.QAHead(0)
    with pytest.raises(ValueError, match=r"nn.Linear\(H, 2\) QA head; got out_features=3"):
        qa_kernels.QAHead.from_linear(torch.nn.Linear(8, 3))
    with pytest.raises(TypeError, match=r"expects an nn\.Linear; got Conv1d"):
        qa_kernels.QAHead.from_linear(torch.nn.Conv1d(8, 2, 1))


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with qa_kernels.use_backend("triton"), pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1"):
        qa_kernels.qa_head(**good())
