"""A real transformers.BertForQuestionAnswering (tiny random config, nothing downloaded): its eager
head against the same model's backbone followed by qa_kernels."""

from __future__ import annotations

import copy

import pytest
import torch

import qa_kernels
from tests.utils import TOLERANCE, assert_close

transformers = pytest.importorskip("transformers")


def tiny_bert(device):
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForQuestionAnswering(config).to(device)


@pytest.mark.parametrize("positions", ["valid", "mixed"])
def test_bert_head_through_qa_kernels_matches_eager(backend, device, positions):
    torch.manual_seed(0)
    eager = tiny_bert(device)
    fused = copy.deepcopy(eager)
    B, S = 3, 13
    input_ids = torch.randint(0, 99, (B, S), device=device)
    attention_mask = torch.ones(B, S, dtype=torch.long, device=device)
    attention_mask[0, -4:] = 0
    if positions == "valid":
        start, end = torch.tensor([1, 4, 12], device=device), torch.tensor([2, 6, 12], device=device)
    else:  # negative -> 0; beyond S -> ignored; (B, 1) as data-parallel code passes them
        start, end = torch.tensor([-3, 4, 40], device=device), torch.tensor([[2], [S], [5]], device=device)
    start_before, end_before = start.clone(), end.clone()

    ref = eager(input_ids=input_ids, attention_mask=attention_mask,
                start_positions=start.clone(), end_positions=end.clone())  # fmt: skip
    ref.loss.backward()

    hidden = fused.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
    out = qa_kernels.qa_head(hidden, fused.qa_outputs.weight, fused.qa_outputs.bias, start, end)
    out.loss.backward()

    assert torch.equal(start, start_before) and torch.equal(end, end_before)  # never clamped in place
    tol = TOLERANCE["fp64"][torch.float32]
    assert_close(out.start_logits, ref.start_logits, tol, "start_logits")
    assert_close(out.end_logits, ref.end_logits, tol, "end_logits")
    assert_close(out.loss, ref.loss, tol, "loss")
    eager_params = dict(eager.named_parameters())
    # Some gradients are 0 in exact arithmetic (attention key biases: softmax is shift-invariant;
    # the last LayerNorm's bias: each row's softmax - onehot sums to 0), so rounding noise is
    # bounded relative to the model's largest gradient.
    largest = max(p.grad.abs().max().item() for p in eager_params.values())
    for name, p in fused.named_parameters():
        assert p.grad is not None, name
        assert_close(p.grad, eager_params[name].grad, 1e-4, f"grad of {name}", atol=1e-6 * largest)
