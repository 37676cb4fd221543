"""QuestionAnswerer: tokenization into overlapping features, offsets back to characters, merging of
features per example, no-answer handling. A WordPiece vocabulary written here, nothing downloaded;
a stub model whose logits point at known words, and a tiny random BERT checked against
transformers' own per-feature decoding."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import qa_kernels
from qa_kernels.answerer import Answer, merge_features

transformers = pytest.importorskip("transformers")

WORDS = (
    "the capital of france is paris . what where eiffel tower stands in city a river seine flows "
    "through it and many people visit every year ? which old bridge crosses"
).split()
FILLER = "many people visit the old city every year and a river flows through it ."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocab")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)
    assert tokenizer.vocab_size == len(tokens) and tokenizer.is_fast
    return tokenizer


class PointingModel(torch.nn.Module):
    """Start logit `high` on the token `start_word`, end logit `high` on `end_word`, 0 elsewhere;
    `null` on the first token (CLS) of both sides."""

    def __init__(self, tokenizer, start_word, end_word, high=8.0, null=0.0):
        super().__init__()
        self.start_id, self.end_id = tokenizer.convert_tokens_to_ids([start_word, end_word])
        self.high, self.null = high, null
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the answerer a device

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        start = torch.where(input_ids == self.start_id, self.high, 0.0)
        end = torch.where(input_ids == self.end_id, self.high, 0.0)
        start[:, 0] = end[:, 0] = self.null
        return SimpleNamespace(start_logits=start, end_logits=end)


def _span(context: str, text: str) -> tuple[int, int]:
    start = context.index(text)
    return start, start + len(text)


def test_answer_maps_back_to_characters(tokenizer):
    context = "The capital of France is Paris. The Eiffel Tower stands in Paris."
    qa = qa_kernels.QuestionAnswerer(PointingModel(tokenizer, "eiffel", "tower"), tokenizer, fused_head=False)
    [[best]] = qa("Where is the Eiffel Tower?", context)
    assert (best.start, best.end) == _span(context, "Eiffel Tower")
    assert best.text == "Eiffel Tower"  # the original casing and spacing: a slice of the context
    assert 0.0 < best.score <= 1.0


def test_long_context_overflows_and_merges(tokenizer):
    # Example 0: the answer sits in the last feature only; example 1: a short context, one feature.
    long_context = f"{FILLER} " * 6 + "The Seine flows through Paris."
    short_context = "The capital of France is Paris."
    qa = qa_kernels.QuestionAnswerer(
        PointingModel(tokenizer, "seine", "seine"), tokenizer, max_length=32, stride=8, fused_head=False
    )
    encoding = qa.tokenize(["Which river?", "Which river?"], [long_context, short_context])
    samples = encoding["overflow_to_sample_mapping"].tolist()
    assert samples.count(0) >= 4 and samples.count(1) == 1, samples
    answers = qa(["Which river?", "Which river?"], [long_context, short_context], top_k=2)
    assert (answers[0][0].text, answers[0][0].start) == ("Seine", long_context.index("Seine"))
    # example 1 has no "seine": its best spans are its own words, never example 0's
    assert all(0 <= a.start < a.end <= len(short_context) and a.text != "Seine" for a in answers[1])
    assert len(answers[1]) == 2


def test_overlapping_features_give_each_span_once(tokenizer):
    # "bridge" falls in the overlap of consecutive features: both find it; the answer lists it once.
    context = f"{FILLER} {FILLER} the old bridge crosses the river. {FILLER} {FILLER}"
    qa = qa_kernels.QuestionAnswerer(
        PointingModel(tokenizer, "bridge", "bridge"), tokenizer, max_length=40, stride=20, fused_head=False
    )
    encoding = qa.tokenize(["which bridge?"], [context])
    bridge = tokenizer.convert_tokens_to_ids("bridge")
    assert (encoding["input_ids"] == bridge).any(dim=1).sum() >= 2, "the test needs the word in two features"
    answers = qa("which bridge?", context, top_k=5)[0]
    spans = [(a.start, a.end) for a in answers]
    assert len(spans) == len(set(spans)) == 5
    assert answers[0].text == "bridge" and spans[0] == _span(context, "bridge")
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)


@pytest.mark.parametrize("score", ["prob", "logit"])
def test_no_answer(tokenizer, score):
    context = "The capital of France is Paris."
    question = "What flows through it?"
    high_null = PointingModel(tokenizer, "paris", "paris", high=4.0, null=9.0)
    qa = qa_kernels.QuestionAnswerer(high_null, tokenizer, score=score, fused_head=False)
    answers = qa(question, context, top_k=2, handle_impossible_answer=True)[0]
    assert answers[0] == Answer("", answers[0].score, 0, 0) and answers[1].text == "Paris"
    assert answers[0].score > answers[1].score
    # a threshold above the gap lets the span win; without the option there is no null answer
    gap = answers[0].score - answers[1].score
    answers = qa(question, context, top_k=1, handle_impossible_answer=True, null_threshold=gap * 1.01 + 1e-6)[0]
    assert [a.text for a in answers] == ["Paris"]
    assert all(a.text for a in qa(question, context, top_k=3)[0])


def test_merge_features_by_hand():
    contexts = ["abcdefghij", "klmnop"]
    # features 0 and 1 belong to example 0 (tokens of one character each), feature 2 to example 1
    offsets = [[(0, 0), (0, 1), (1, 2), (2, 3)], [(0, 0), (2, 3), (3, 4), (4, 5)], [(0, 0), (0, 2), (2, 4), (0, 0)]]
    starts = [[1, 3, -1], [1, 2, 3], [2, -1, -1]]
    ends = [[2, 3, -1], [1, 3, 3], [2, -1, -1]]
    scores = [[0.5, 0.3, float("-inf")], [0.4, 0.35, 0.1], [0.9, float("-inf"), float("-inf")]]
    null = [0.2, 0.6, 0.05]
    got = merge_features(contexts, [0, 0, 1], offsets, starts, ends, scores, null, top_k=3)
    # "c" (2, 3) is found by feature 0 (0.3) and feature 1 (0.4): once, with the better score
    assert got[0] == [Answer("ab", 0.5, 0, 2), Answer("c", 0.4, 2, 3), Answer("de", 0.35, 3, 5)]
    assert got[1] == [Answer("mn", 0.9, 2, 4)]
    # the null score of an example is its features' smallest (0.2), ranked by null - threshold = 0.45
    got = merge_features(contexts, [0, 0, 1], offsets, starts, ends, scores, null, top_k=3,
                         handle_impossible_answer=True, null_threshold=-0.25)  # fmt: skip
    assert got[0] == [Answer("ab", 0.5, 0, 2), Answer("", 0.2, 0, 0), Answer("c", 0.4, 2, 3)]
    assert got[1] == [Answer("mn", 0.9, 2, 4), Answer("", 0.05, 0, 0)]


def _pipeline_reference(qa, questions, contexts, top_k):
    """transformers' (removed) question-answering pipeline's decoding, per feature, with its own
    select_starts_ends: p_mask outside the context except CLS, spans to characters, merged by score."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    encoding = qa.tokenize(questions, contexts)
    start_logits, end_logits = qa.logits(encoding)
    best = [{} for _ in contexts]
    for f, example in enumerate(encoding["overflow_to_sample_mapping"].tolist()):
        ids = encoding.sequence_ids(f)
        p_mask = np.array([[sid != 1 for sid in ids]], dtype=np.int64)
        p_mask[0, 0] = 0
        attention = encoding["attention_mask"][f : f + 1].numpy()
        starts, ends, scores, _ = select_starts_ends(
            start_logits[f : f + 1].numpy(), end_logits[f : f + 1].numpy(), p_mask, attention,
            top_k=top_k, max_answer_len=qa.max_answer_len,
        )  # fmt: skip
        offsets = encoding["offset_mapping"][f].tolist()
        for i, j, s in zip(starts.tolist(), ends.tolist(), scores.tolist(), strict=True):
            span = (offsets[i][0], offsets[j][1])
            best[example][span] = max(best[example].get(span, 0.0), s)
    return [sorted(b.items(), key=lambda kv: -kv[1])[:top_k] for b in best]


@pytest.mark.parametrize("fused_head", [False, True])
def test_tiny_bert_matches_transformers_decoding(backend, tokenizer, fused_head):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    model = transformers.BertForQuestionAnswering(config)
    qa = qa_kernels.QuestionAnswerer(model, tokenizer, max_length=48, stride=16, fused_head=fused_head)
    assert qa.fused_head == fused_head
    questions = ["What is the capital of France?", "Where does the river flow?"]
    contexts = ["The capital of France is Paris.", f"{FILLER} The Seine flows through Paris. {FILLER} {FILLER}"]
    answers = qa(questions, contexts, top_k=4)
    reference = _pipeline_reference(qa, questions, contexts, top_k=4)
    for example, (got, want) in enumerate(zip(answers, reference, strict=True)):
        assert [(a.start, a.end) for a in got] == [span for span, _ in want], f"example {example}"
        np.testing.assert_allclose([a.score for a in got], [s for _, s in want], rtol=1e-5)
        assert all(a.text == contexts[example][a.start : a.end] for a in got)


def test_bad_arguments(tokenizer):
    model = PointingModel(tokenizer, "paris", "paris")
    with pytest.raises(ValueError, match="stride"):
        qa_kernels.QuestionAnswerer(model, tokenizer, max_length=16, stride=16, fused_head=False)
    with pytest.raises(ValueError, match="score must be one of"):
        qa_kernels.QuestionAnswerer(model, tokenizer, score="softmax", fused_head=False)
    qa = qa_kernels.QuestionAnswerer(model, tokenizer, fused_head=False)
    with pytest.raises(ValueError, match="pair up"):
        qa(["a?", "b?"], ["only one context"])
    with pytest.raises(ValueError, match="top_k"):
        qa("a?", "context", top_k=0)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(max_length=3.5), TypeError, "max_length must be an int >= 1; got 3.5 (float)"),
        (dict(max_length="384"), TypeError, "max_length must be an int >= 1; got '384' (str)"),
        (dict(max_length=True), TypeError, "max_length must be an int >= 1; got True (bool)"),
        (dict(max_length=0), ValueError, "max_length must be an int >= 1; got 0"),
        (dict(stride=8.0), TypeError, "stride must be an int in [0, max_length = 384); got 8.0 (float)"),
        (dict(stride=None), TypeError, "stride must be an int in [0, max_length = 384); got None (NoneType)"),
        (dict(stride=-1), ValueError, "stride must be an int in [0, max_length = 384); got -1"),
        (dict(max_length=16, stride=16), ValueError, "stride must be an int in [0, max_length = 16); got 16"),
        (dict(max_answer_len=15.0), TypeError, "max_answer_len must be an int >= 1; got 15.0 (float)"),
        (dict(max_answer_len=0), ValueError, "max_answer_len must be an int >= 1; got 0"),
        (dict(batch_size="32"), TypeError, "batch_size must be an int >= 1; got '32' (str)"),
        (dict(batch_size=-2), ValueError, "batch_size must be an int >= 1; got -2"),
        (dict(fused_head="no"), TypeError, "fused_head must be a bool; got 'no' (str)"),
    ],
)
def test_bad_numeric_arguments_name_the_argument(tokenizer, kwargs, error, message):
    """Each integer argument is checked for type and range (fused_head for type); the error names the
    argument, what it got and what is expected. Nothing is done to the model before the checks pass."""
    model = PointingModel(tokenizer, "paris", "paris").train()
    with pytest.raises(error) as info:
        qa_kernels.QuestionAnswerer(model, tokenizer, **{"fused_head": False, **kwargs})
    assert str(info.value) == f"QuestionAnswerer: {message}"
    assert model.training


def test_numpy_integers_are_accepted(tokenizer):
    model = PointingModel(tokenizer, "paris", "paris")
    qa = qa_kernels.QuestionAnswerer(
        model, tokenizer, max_length=np.int64(32), stride=np.int32(8), max_answer_len=np.int16(5), fused_head=False
    )
    assert (qa.max_length, qa.stride, qa.max_answer_len) == (32, 8, 5)
    assert all(type(v) is int for v in (qa.max_length, qa.stride, qa.max_answer_len, qa.batch_size))
    assert qa("Which city?", "The capital of France is Paris.")[0][0].text == "Paris"


def test_model_is_patched_in_place_and_put_in_eval_mode(tokenizer):
    """As documented: the caller's own model object is switched to eval() and (fused_head=True)
    patched in place; unpatch() and train() give it back."""
    from qa_kernels.integrations import hf

    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.BertForQuestionAnswering(config).train()
    qa = qa_kernels.QuestionAnswerer(model, tokenizer, max_length=32, stride=8)
    assert qa.model is model and qa.fused_head
    assert hf.is_patched(model) and not model.training
    qa_kernels.unpatch(model).train()
    assert type(model) is transformers.BertForQuestionAnswering and model.training
    unfused = qa_kernels.QuestionAnswerer(model, tokenizer, fused_head=False)
    assert unfused.model is model and not hf.is_patched(model) and not model.training
