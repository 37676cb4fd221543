"""Tiny random transformers QA models (nothing is downloaded), their inputs, and the comparisons of
a patched model with its eager twin: shared by tests/integrations/ (its tests and the
torchrun_trainer.py script).

Sizes are the smallest each config accepts, so the set stays fast under the Triton interpreter;
S = 13 is odd on purpose (no power-of-two block fits it exactly)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import qa_kernels
from tests.utils import assert_close

transformers = pytest.importorskip("transformers")

VOCAB, B, S = 99, 3, 13
# Shared by every encoder config: tiny, and no dropout (patched and eager runs must draw the same
# masks; DistilBert's qa_dropout, the one dropout the patch must keep, is tested on its own).
BERTISH = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    attn_implementation="eager",  # sdpa returns no attention weights; eager does (output_attentions)
)  # fmt: skip
EAGER = {"attn_implementation": "eager"}


def bert():
    return transformers.BertForQuestionAnswering(transformers.BertConfig(**BERTISH))


def roberta():
    return transformers.RobertaForQuestionAnswering(transformers.RobertaConfig(**BERTISH, pad_token_id=1))


def xlm_roberta():
    return transformers.XLMRobertaForQuestionAnswering(transformers.XLMRobertaConfig(**BERTISH, pad_token_id=1))


def electra():
    return transformers.ElectraForQuestionAnswering(transformers.ElectraConfig(**BERTISH, embedding_size=16))


def albert():
    config = transformers.AlbertConfig(**BERTISH, embedding_size=16, classifier_dropout_prob=0.0)
    return transformers.AlbertForQuestionAnswering(config)


def deberta_v2():
    config = transformers.DebertaV2Config(**BERTISH, relative_attention=True, position_buckets=8,
                                          pos_att_type=["p2c", "c2p"])  # fmt: skip
    return transformers.DebertaV2ForQuestionAnswering(config)


def mobilebert():
    config = transformers.MobileBertConfig(
        **BERTISH, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2
    )
    return transformers.MobileBertForQuestionAnswering(config)


def distilbert(qa_dropout=0.0):
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                           qa_dropout=qa_dropout, **EAGER)  # fmt: skip
    return transformers.DistilBertForQuestionAnswering(config)


def longformer():
    config = transformers.LongformerConfig(**BERTISH, attention_window=4, pad_token_id=1, sep_token_id=2)
    return transformers.LongformerForQuestionAnswering(config)


def llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, **EAGER)  # fmt: skip
    return transformers.LlamaForQuestionAnswering(config)


def gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=1, eos_token_id=2, **EAGER)  # fmt: skip
    return transformers.GPT2ForQuestionAnswering(config)


def gpt_neox():  # not in MODELS: its forward calls self.loss_function without **kwargs (custom-loss test)
    config = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64, hidden_dropout=0.0,
                                        attention_dropout=0.0, **EAGER)  # fmt: skip
    return transformers.GPTNeoXForQuestionAnswering(config)


def opt():  # the head sits on word_embed_proj_dim (16), not hidden_size (32)
    config = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=2,
                                    num_attention_heads=4, ffn_dim=37, max_position_embeddings=64, dropout=0.0,
                                    attention_dropout=0.0, pad_token_id=1, **EAGER)  # fmt: skip
    return transformers.OPTForQuestionAnswering(config)


def bart():
    config = transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                                     decoder_ffn_dim=37, max_position_embeddings=64, dropout=0.0,
                                     attention_dropout=0.0, activation_dropout=0.0, classifier_dropout=0.0,
                                     **EAGER)  # fmt: skip
    return transformers.BartForQuestionAnswering(config)


def t5():
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_decoder_layers=1,
                                   num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, **EAGER)  # fmt: skip
    return transformers.T5ForQuestionAnswering(config)


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "bert": bert,
    "roberta": roberta,
    "xlm-roberta": xlm_roberta,
    "electra": electra,
    "albert": albert,
    "deberta-v2": deberta_v2,
    "mobilebert": mobilebert,
    "distilbert": distilbert,
    "longformer": longformer,
    "llama": llama,  # GenericForQuestionAnswering: self.loss_function(..., **kwargs)
    "gpt2": gpt2,
    "opt": opt,
    "bart": bart,  # encoder-decoder: Seq2SeqQuestionAnsweringModelOutput
    "t5": t5,
}


def make_inputs(name: str, device: str, *, batch: int = B, seq: int = S) -> dict[str, torch.Tensor]:
    """input_ids (B, S) and a padded attention_mask; tokens 0..3 are kept out of the text so that
    pad/bos/sep ids appear only where placed."""
    input_ids = torch.randint(4, VOCAB, (batch, seq), device=device)
    attention_mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    attention_mask[0, -3:] = 0
    if name == "longformer":
        # Without a global_attention_mask, Longformer's QA forward builds one from exactly three
        # sep tokens per row (question </s></s> context </s>): that path runs here.
        input_ids[:, [2, 3, seq - 1]] = 2
        attention_mask[0, -3:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def positions(kind: str, device: str, seq: int = S) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) for batch B. "mixed": a negative start (eager trains it towards token 0), a start
    beyond S and an end equal to S (both ignored), and end given as (B, 1) as data-parallel code
    passes it; every side keeps at least one valid row, so the loss is finite."""
    if kind == "valid":
        return torch.tensor([1, 4, seq - 1], device=device), torch.tensor([2, 6, seq - 1], device=device)
    assert kind == "mixed", kind
    return torch.tensor([-3, 4, 40], device=device), torch.tensor([[2], [seq], [5]], device=device)


def twin(name: str, device: str, **factory_kwargs) -> tuple[nn.Module, nn.Module]:
    """An eager model and a patched deep copy of it: same parameters, same buffers."""
    eager = MODELS[name](**factory_kwargs).to(device)
    return eager, qa_kernels.patch(copy.deepcopy(eager))


def tensors_of(value, depth: int = 0) -> list[torch.Tensor]:
    """The tensors in an output field: a tensor, a (nested) tuple of them, or a cache object (its
    attributes, in name order)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_of(v, depth + 1)]
    if hasattr(value, "__dict__") and depth < 4:
        return [t for _, v in sorted(vars(value).items()) for t in tensors_of(v, depth + 1)]
    return []


HEAD_FIELDS = ("loss", "start_logits", "end_logits")


def assert_outputs_match(out, ref, tol: float) -> None:
    """Same output class and fields; the head's fields within ``tol``; every other field (hidden
    states, attentions, Seq2Seq and Longformer fields) bit-identical: the backbone is untouched."""
    assert type(out) is type(ref), f"{type(out).__name__} != {type(ref).__name__}"
    assert list(out.keys()) == list(ref.keys()), f"fields {list(out.keys())} != {list(ref.keys())}"
    for key in ref.keys():
        if key in HEAD_FIELDS:
            assert out[key].dtype == ref[key].dtype, f"{key}: dtype {out[key].dtype} != {ref[key].dtype}"
            assert_close(out[key], ref[key], tol, key)
        else:
            got, want = tensors_of(out[key]), tensors_of(ref[key])
            assert len(got) == len(want) > 0, f"{key}: {len(got)} tensors != {len(want)}"
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), f"{key} differs"


def assert_grads_match(fused: nn.Module, eager: nn.Module, tol: float = 1e-4, noise: float = 1e-6) -> None:
    """EVERY parameter's gradient, within ``tol`` of its own largest entry. Some are 0 in exact
    arithmetic (attention key biases: softmax is shift-invariant; the last LayerNorm's bias: each
    row's softmax - onehot sums to 0), so their rounding noise is bounded by ``noise`` times the
    model's largest gradient instead."""
    eager_params = dict(eager.named_parameters())
    assert list(dict(fused.named_parameters())) == list(eager_params)
    largest = max(p.grad.abs().max().item() for p in eager_params.values() if p.grad is not None)
    assert largest > 0
    for name, p in fused.named_parameters():
        ref = eager_params[name].grad
        assert (p.grad is None) == (ref is None), f"grad of {name}: {p.grad is None=} but {ref is None=}"
        if ref is not None:
            assert_close(p.grad, ref, tol, f"grad of {name}", atol=noise * largest)


# A span-finding task a tiny BERT learns within 30 steps: the training tests' data.
N_EXAMPLES, SEQ, BATCH, STEPS, LR = 64, 16, 8, 30, 3e-3
START_TOKEN, END_TOKEN = 5, 6


def span_dataset(n: int = N_EXAMPLES, seq: int = SEQ, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids with the answer span marked in the text: token 5 at the start position and
    token 6 at the end position (0-3 tokens later). A tiny model learns it within 30 steps."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(7, 99, (n, seq), generator=g)
    start = torch.randint(1, seq - 4, (n,), generator=g)
    end = start + torch.randint(0, 4, (n,), generator=g)
    input_ids[torch.arange(n), start] = START_TOKEN
    input_ids[torch.arange(n), end] = END_TOKEN
    return {"input_ids": input_ids, "start_positions": start, "end_positions": end}


class SpanDataset(torch.utils.data.Dataset):
    def __init__(self):
        self.data = span_dataset()

    def __len__(self):
        return N_EXAMPLES

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.items()}
