"""decode_spans: every backend against a float64 brute force over all S x S pairs, against
transformers' select_starts_ends / decode_spans, tie order, empty ranks, dtypes, strides, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qa_kernels
from qa_kernels.ops.decode_spans.op import decode_spans_op

# Our scores are float32 (the contract); the brute force is float64 from the same float32 inputs.
# prob: a product of two exp / sum terms, each a few float32 ulps off: relative 1e-5 elementwise.
# logit: one float32 addition of values of size ~max|logit|: absolute 1e-6 x max|logit|.
PROB_RTOL = 1e-5
LOGIT_ATOL_REL = 1e-6


def brute_force(start, end, context, max_answer_len, score):
    """float64 reference over every (i, j) pair of one row: sorted (starts, ends, scores) of all the
    candidates (ties: lower start, then lower end) and the null score."""
    s, e = start.double().numpy(), end.double().numpy()
    ctx = context.numpy()
    if score == "prob":
        keep = ctx.copy()
        keep[0] = True  # the first token stays in the softmax (the null answer), as transformers'
        s, e = np.where(keep, s, -10000.0), np.where(keep, e, -10000.0)
        s, e = np.exp(s - s.max()), np.exp(e - e.max())
        s, e = s / s.sum(), e / e.sum()
        pair = s[:, None] * e[None, :]
        null = s[0] * e[0]
    else:
        pair = s[:, None] + e[None, :]
        null = s[0] + e[0]
    i, j = np.meshgrid(np.arange(len(s)), np.arange(len(s)), indexing="ij")
    ok = (j >= i) & (j - i < max_answer_len) & ctx[:, None] & ctx[None, :]
    i, j, v = i[ok], j[ok], pair[ok]
    order = np.lexsort((j, i, -v))  # last key is primary: score descending, then start, then end
    return i[order], j[order], v[order], null


def check_row(out, row, start, end, context, max_answer_len, top_k, score):
    """One row of our output against the brute force. Positions must match exactly wherever the
    reference scores are separated by more than the tolerance (near-ties may swap)."""
    ref_i, ref_j, ref_v, ref_null = brute_force(start, end, context, max_answer_len, score)
    starts, ends, scores = out.starts[row].cpu(), out.ends[row].cpu(), out.scores[row].cpu().double()
    n = min(top_k, len(ref_v))
    scale = max(start.abs().max().item(), end.abs().max().item(), 1.0)
    tol = (lambda v: PROB_RTOL * abs(v) + 1e-30) if score == "prob" else (lambda v: LOGIT_ATOL_REL * scale)

    # ranks past the candidates: exactly (-1, -1, -inf)
    assert (starts[n:] == -1).all() and (ends[n:] == -1).all(), f"row {row}: empty ranks {starts[n:]}"
    assert torch.isneginf(scores[n:]).all(), f"row {row}: empty ranks' scores {scores[n:]}"
    # the scores are the reference's top-n values, in order
    for r in range(n):
        assert abs(scores[r].item() - ref_v[r]) <= tol(ref_v[r]), f"row {row} rank {r}: {scores[r]} vs {ref_v[r]}"
    # every span returned is a candidate, distinct, and its own exact score is the one reported
    ref_score = {(a, b): v for a, b, v in zip(ref_i.tolist(), ref_j.tolist(), ref_v.tolist(), strict=True)}
    spans = list(zip(starts[:n].tolist(), ends[:n].tolist(), strict=True))
    assert len(set(spans)) == n, f"row {row}: duplicate spans {spans}"
    for r, span in enumerate(spans):
        assert span in ref_score, f"row {row} rank {r}: {span} is not a candidate"
        assert abs(scores[r].item() - ref_score[span]) <= tol(ref_score[span]), f"row {row} rank {r}: {span}"
    # positions: exact where the reference is not a near-tie
    for r in range(n):
        gap_prev = ref_v[r - 1] - ref_v[r] if r > 0 else np.inf
        gap_next = ref_v[r] - ref_v[r + 1] if r + 1 < len(ref_v) else np.inf
        if min(gap_prev, gap_next) > 4 * tol(ref_v[r]):
            assert spans[r] == (ref_i[r], ref_j[r]), f"row {row} rank {r}: {spans[r]} vs {(ref_i[r], ref_j[r])}"
    assert abs(out.null_scores[row].item() - ref_null) <= tol(ref_null), f"row {row}: null score"


def _rows(S, device, generator):
    """Three rows: random context (~70%), the whole row, a sparse context (~10%; often empty at S=5)."""
    start = torch.randn(3, S, generator=generator) * 3
    end = torch.randn(3, S, generator=generator) * 3
    u = torch.rand(3, S, generator=generator)
    context = torch.stack([u[0] < 0.7, torch.ones(S, dtype=torch.bool), u[2] < 0.1])
    return start.to(device), end.to(device), context.to(device)


@pytest.mark.parametrize("score", ["prob", "logit"])
@pytest.mark.parametrize("top_k", [1, 5, 20])
@pytest.mark.parametrize("max_answer_len", [1, 15, 30])
# S=1: a single token; 5: fewer candidates than top_k; 384, 512: SQuAD feature lengths
@pytest.mark.parametrize("S", [1, 5, 384, 512])
def test_brute_force(backend, device, S, max_answer_len, top_k, score):
    generator = torch.Generator().manual_seed(S * 1000 + max_answer_len * 10 + top_k)
    start, end, context = _rows(S, device, generator)
    out = qa_kernels.decode_spans(
        start, end, context_mask=context, max_answer_len=max_answer_len, top_k=top_k, score=score
    )
    assert out.starts.shape == out.ends.shape == out.scores.shape == (3, top_k)
    assert out.null_scores.shape == (3,)
    assert out.starts.dtype == out.ends.dtype == torch.int64
    assert out.scores.dtype == out.null_scores.dtype == torch.float32
    assert out.starts.device.type == torch.device(device).type
    for row in range(3):
        check_row(out, row, start[row].cpu(), end[row].cpu(), context[row].cpu(), max_answer_len, top_k, score)


@pytest.mark.parametrize("score", ["prob", "logit"])
def test_no_mask_is_everywhere(backend, device, score):
    start, end = torch.randn(2, 40, device=device), torch.randn(2, 40, device=device)
    out = qa_kernels.decode_spans(start, end, max_answer_len=7, top_k=10, score=score)
    for row in range(2):
        check_row(out, row, start[row].cpu(), end[row].cpu(), torch.ones(40, dtype=torch.bool), 7, 10, score)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, device, dtype):
    # The math is float32 on the inputs as given: compare with the brute force on x.float().
    start = torch.randn(2, 64, device=device).to(dtype)
    end = torch.randn(2, 64, device=device).to(dtype)
    context = torch.rand(2, 64, device=device) < 0.8
    out = qa_kernels.decode_spans(start, end, context_mask=context, max_answer_len=10, top_k=5)
    for row in range(2):
        check_row(out, row, start[row].float().cpu(), end[row].float().cpu(), context[row].cpu(), 10, 5, "prob")


def test_strided_inputs_and_integer_mask(backend, device):
    # Logits as a model's head yields them: two strided views of one (B, S, 2) tensor; a 0/1 int mask.
    logits = torch.randn(3, 50, 2, device=device)
    start, end = logits[..., 0], logits[..., 1]
    context = (torch.rand(3, 50, device=device) < 0.6).to(torch.int64)
    out = qa_kernels.decode_spans(start, end, context_mask=context, max_answer_len=8, top_k=6, score="logit")
    ref = qa_kernels.decode_spans(
        start.contiguous(), end.contiguous(), context_mask=context.bool(), max_answer_len=8, top_k=6, score="logit"
    )
    for name, a, b in zip(out._fields, out, ref, strict=True):
        assert torch.equal(a, b), f"{name}: strided inputs give a different result"
    for row in range(3):
        check_row(out, row, start[row].cpu(), end[row].cpu(), context[row].bool().cpu(), 8, 6, "logit")


@pytest.mark.parametrize("score", ["prob", "logit"])
def test_ties_lower_start_then_lower_end(backend, device, score):
    # Equal logits: every candidate has exactly the same float32 score, so the order is the tie rule.
    S, L = 6, 3
    start = torch.zeros(1, S, device=device)
    end = torch.zeros(1, S, device=device)
    context = torch.tensor([[False, True, True, False, True, True]], device=device)
    out = qa_kernels.decode_spans(start, end, context_mask=context, max_answer_len=L, top_k=8, score=score)
    # not (1, 3): token 3 is outside the context; not (1, 4) nor (2, 5): longer than L
    expected = [(1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 5), (5, 5)]
    got = list(zip(out.starts[0].tolist(), out.ends[0].tolist(), strict=True))
    assert got == expected + [(-1, -1)], got
    assert len(set(out.scores[0, :7].tolist())) == 1, "tied spans must have bitwise equal scores"
    # A strictly better span anywhere comes first; the rest keep the tie order.
    end[0, 5] = 1.0
    out = qa_kernels.decode_spans(start, end, context_mask=context, max_answer_len=L, top_k=3, score=score)
    assert list(zip(out.starts[0].tolist(), out.ends[0].tolist(), strict=True)) == [(4, 5), (5, 5), (1, 1)]


def test_no_candidate_ranks(backend, device):
    start, end = torch.randn(3, 10, device=device), torch.randn(3, 10, device=device)
    context = torch.zeros(3, 10, dtype=torch.bool, device=device)
    context[1, 4] = True  # one token: one span (4, 4)
    context[2, 2:4] = True  # two tokens, L = 1: two spans
    out = qa_kernels.decode_spans(start, end, context_mask=context, max_answer_len=1, top_k=4)
    # p_start[t] * p_end[t] grows with start[t] + end[t] (one softmax normalization per side)
    row2 = sorted([2, 3], key=lambda t: -(start[2, t] + end[2, t]).item())
    assert out.starts.tolist() == [[-1] * 4, [4, -1, -1, -1], row2 + [-1] * 2]
    assert torch.equal(out.starts, out.ends), "L = 1: every span is one token"
    assert torch.isneginf(out.scores[0]).all() and torch.isneginf(out.scores[1, 1:]).all()
    assert torch.isfinite(out.scores[1, 0]) and torch.isfinite(out.scores[2, :2]).all()


@pytest.mark.parametrize("score", ["prob", "logit"])
def test_nan_logits_agree_with_the_torch_implementation(backend, device, score):
    """A NaN logit (a diverged model) is not hidden: every backend ranks and scores exactly as the
    PyTorch implementation, NaN null scores included (a max-based reduction would drop them)."""
    from qa_kernels.ops.decode_spans import torch_impl

    start, end = torch.randn(2, 9, device=device), torch.randn(2, 9, device=device)
    start[0, 0] = start[0, 3] = float("nan")
    end[1, 5] = float("nan")
    out = qa_kernels.decode_spans(start, end, max_answer_len=4, top_k=6, score=score)
    ref = torch_impl.decode_spans(start, end, None, 4, 6, score == "logit")
    assert out.null_scores[0].isnan()  # start[0, 0] is NaN
    # Row 1: one NaN end logit turns the whole end softmax into NaN; a logit sum stays finite at (0, 0).
    assert out.null_scores[1].isnan() if score == "prob" else out.null_scores[1].isfinite()
    for got, want, name in zip(out, ref, ["starts", "ends", "scores", "null_scores"], strict=True):
        assert torch.equal(got.isnan(), want.isnan()), name
        assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0)), f"{name}: {got} vs {want}"


def test_empty_batch(backend, device):
    out = qa_kernels.decode_spans(torch.randn(0, 7, device=device), torch.randn(0, 7, device=device), top_k=3)
    assert out.starts.shape == out.scores.shape == (0, 3) and out.null_scores.shape == (0,)


@pytest.mark.parametrize("top_k", [1, 5])
def test_matches_transformers(backend, device, top_k):
    """transformers' pipelines: p_mask = 1 outside the context but 0 at CLS (kept in the softmax for
    the null score), CLS zeroed after the softmax. Our context_mask: the context alone."""
    dqa = pytest.importorskip("transformers.pipelines.document_question_answering")
    generator = torch.Generator().manual_seed(7)
    B, S, L = 4, 128, 15
    start = torch.randn(B, S, generator=generator) * 2
    end = torch.randn(B, S, generator=generator) * 2
    context = torch.zeros(B, S, dtype=torch.bool)
    for b, (lo, hi) in enumerate([(10, 128), (20, 100), (5, 60), (90, 128)]):
        context[b, lo:hi] = True  # question then context then padding, as a tokenizer lays them out
    out = qa_kernels.decode_spans(
        start.to(device), end.to(device), context_mask=context.to(device), max_answer_len=L, top_k=top_k
    )
    for b in range(B):
        p_mask = (~context[b]).numpy().astype(np.int64)
        p_mask[0] = 0
        attention = np.ones((1, S), dtype=np.int64)
        hf_starts, hf_ends, hf_scores, hf_null = dqa.select_starts_ends(
            start[b : b + 1].numpy(), end[b : b + 1].numpy(), p_mask[None], attention,
            top_k=top_k, handle_impossible_answer=True, max_answer_len=L,
        )  # fmt: skip
        assert out.starts[b].tolist() == hf_starts.tolist(), f"row {b}"
        assert out.ends[b].tolist() == hf_ends.tolist(), f"row {b}"
        np.testing.assert_allclose(out.scores[b].cpu().numpy(), hf_scores, rtol=PROB_RTOL)
        np.testing.assert_allclose(out.null_scores[b].item(), hf_null, rtol=PROB_RTOL)


def test_opcheck(backend, device):
    args = (torch.randn(3, 20, device=device), torch.randn(3, 20, device=device),
            torch.rand(3, 20, device=device) < 0.7, 5, 4, False)  # fmt: skip
    torch.library.opcheck(decode_spans_op, args)


def test_compile_fullgraph(device):
    fn = torch.compile(qa_kernels.decode_spans, fullgraph=True, backend="aot_eager")
    start, end = torch.randn(2, 30, device=device), torch.randn(2, 30, device=device)
    got = fn(start, end, max_answer_len=5, top_k=3, score="logit")
    want = qa_kernels.decode_spans(start, end, max_answer_len=5, top_k=3, score="logit")
    for name, a, b in zip(want._fields, got, want, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(end_logits=torch.randn(2, 9)), ValueError, "same shape"),
        (dict(start_logits=torch.randn(2, 8, 1)), ValueError, "start_logits must have shape"),
        (dict(start_logits=torch.randint(0, 5, (2, 8))), TypeError, "start_logits must be a floating"),
        (dict(end_logits=[0.0] * 8), TypeError, "end_logits must be a torch.Tensor"),
        (dict(start_logits=torch.randn(2, 0), end_logits=torch.randn(2, 0)), ValueError, "S >= 1"),
        (dict(top_k=0), ValueError, "top_k must be an int >= 1; got 0"),
        (dict(top_k=2.0), TypeError, "top_k must be an int"),
        (dict(max_answer_len=0), ValueError, "max_answer_len must be an int >= 1; got 0"),
        (dict(context_mask=torch.ones(2, 9, dtype=torch.bool)), ValueError, "context_mask must have the logits' shape"),
        (dict(context_mask=torch.ones(8, dtype=torch.bool)), ValueError, "context_mask must have the logits' shape"),
        (dict(score="softmax"), ValueError, "score must be one of"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(start_logits=torch.randn(2, 8), end_logits=torch.randn(2, 8)) | kwargs
    start, end = args.pop("start_logits"), args.pop("end_logits")
    with pytest.raises(error, match=match):
        qa_kernels.decode_spans(start, end, **args)


def test_plain_calls_skip_the_op_dispatch_not_the_numbers(backend, device, monkeypatch):
    """A call with nothing watching runs the registry's implementation directly: bitwise what the
    registered op returns, which still runs under a dispatch mode (and under torch.compile)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from qa_kernels.ops.decode_spans import api

    start, end = torch.randn(3, 40, device=device), torch.randn(3, 40, device=device)
    context = torch.rand(3, 40, device=device) > 0.3
    calls = []
    monkeypatch.setattr(api, "decode_spans_op", lambda *args: calls.append(1) or decode_spans_op(*args))
    fast = qa_kernels.decode_spans(start, end, context_mask=context, top_k=5)
    assert calls == []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    seen: list[str] = []
    with Record():
        via_op = qa_kernels.decode_spans(start, end, context_mask=context, top_k=5)
    assert calls == [1] and "qa_kernels.decode_spans.default" in seen
    for x, y in zip(fast, via_op, strict=True):
        assert torch.equal(x, y)
