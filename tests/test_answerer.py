"""QuestionAnswerer: tokenization into overlapping features, offsets back to characters (snapped to
words or not), the pipeline's softmax rule (CLS tokens in, none without one), merging of features
per example (both aggregations), no-answer handling, the call's argument habits, batching by length.
A WordPiece vocabulary written here, nothing downloaded; a stub model whose logits point at known
tokens, and a tiny random BERT checked per feature against transformers' own ``select_starts_ends``
(the 4.x pipeline's decoding, still in 5.x). The answer-by-answer comparison with the real 4.x
pipeline is tests/test_answerer_pipeline.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import qa_kernels
from qa_kernels.answerer import Answer, merge_features, pipeline_output

transformers = pytest.importorskip("transformers")

WORDS = (
    "the capital of france is paris . what where eiffel tower stands in city a river seine flows "
    "through it and many people visit every year ? which old bridge crosses"
).split()
PIECES = ["gote", "##borg", "anti", "##dis", "##establish", "##ment"]  # words cut into pieces
FILLER = "many people visit the old city every year and a river flows through it ."


def _tokenizer(directory, **kwargs):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS), *PIECES]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True, **kwargs)
    assert tokenizer.vocab_size == len(tokens) and tokenizer.is_fast
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return _tokenizer(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def left_tokenizer(tmp_path_factory):
    """Pads on the left: the context comes first (the pipeline's rule)."""
    return _tokenizer(tmp_path_factory.mktemp("vocab_left"), padding_side="left")


class PointingModel(torch.nn.Module):
    """Start logit `high` on the token `start_word`, end logit `high` on `end_word`, 0 elsewhere;
    `null` on the first token (CLS) of both sides. Records each batch's inputs."""

    def __init__(self, tokenizer, start_word, end_word, high=8.0, null=0.0):
        super().__init__()
        self.start_id, self.end_id = tokenizer.convert_tokens_to_ids([start_word, end_word])
        self.high, self.null = high, null
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the answerer a device
        self.calls = []

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        self.calls.append(
            SimpleNamespace(
                input_ids=input_ids.clone(),
                attention_mask=attention_mask.clone(),
                inference_mode=torch.is_inference_mode_enabled(),
            )
        )
        start = torch.where(input_ids == self.start_id, self.high, 0.0)
        end = torch.where(input_ids == self.end_id, self.high, 0.0)
        start[:, 0] = end[:, 0] = self.null
        return SimpleNamespace(start_logits=start, end_logits=end)


def _span(context: str, text: str) -> tuple[int, int]:
    start = context.index(text)
    return start, start + len(text)


def _qa(model, tokenizer, **kwargs):
    return qa_kernels.QuestionAnswerer(model, tokenizer, **{"fused_head": False, **kwargs})


def test_answer_maps_back_to_characters(tokenizer):
    context = "The capital of France is Paris. The Eiffel Tower stands in Paris."
    qa = _qa(PointingModel(tokenizer, "eiffel", "tower"), tokenizer)
    [[best]] = qa("Where is the Eiffel Tower?", context)
    assert (best.start, best.end) == _span(context, "Eiffel Tower")
    assert best.text == "Eiffel Tower"  # the original casing and spacing: a slice of the context
    assert 0.0 < best.score <= 1.0


@pytest.mark.parametrize("align, want", [(True, "Göteborg"), (False, "borg"), (None, "Göteborg")])
def test_align_to_words(tokenizer, align, want):
    """A span that starts inside a word: snapped to the whole word by default (the pipeline's
    align_to_words=True), the token's own characters with align_to_words=False, per call too."""
    context = "The old city Göteborg is in the capital."
    qa = _qa(PointingModel(tokenizer, "##borg", "##borg"), tokenizer)
    kwargs = {} if align is None else {"align_to_words": align}
    [[best]] = qa("which city?", context, **kwargs)
    assert (best.text, (best.start, best.end)) == (want, _span(context, want))
    qa = _qa(PointingModel(tokenizer, "##borg", "##borg"), tokenizer, align_to_words=False)
    assert qa("which city?", context)[0][0].text == "borg"  # the constructor's default
    assert qa("which city?", context, align_to_words=True)[0][0].text == "Göteborg"


def test_align_to_words_merges_spans_inside_one_word(tokenizer):
    """Every span inside "antidisestablishment" snaps to the same word: with the default
    aggregation it is listed once, and the other answers are still top_k distinct spans (each
    feature decoded deeper where alignment merged its candidates)."""
    context = "The word antidisestablishment is in the old city."
    model = PointingModel(tokenizer, "##dis", "##establish", high=12.0)
    qa = _qa(model, tokenizer)
    answers = qa("which word?", context, top_k=4)[0]
    spans = [(a.start, a.end) for a in answers]
    assert answers[0].text == "antidisestablishment" and len(spans) == len(set(spans)) == 4
    unaligned = qa("which word?", context, top_k=4, align_to_words=False)[0]
    assert unaligned[0].text == "disestablish"


def test_long_context_overflows_and_merges(tokenizer):
    # Example 0: the answer sits in the last feature only; example 1: a short context, one feature.
    long_context = f"{FILLER} " * 6 + "The Seine flows through Paris."
    short_context = "The capital of France is Paris."
    qa = _qa(PointingModel(tokenizer, "seine", "seine"), tokenizer, max_length=32, stride=8)
    encoding = qa.tokenize(["Which river?", "Which river?"], [long_context, short_context])
    samples = encoding["overflow_to_sample_mapping"]
    assert samples.count(0) >= 4 and samples.count(1) == 1, samples
    answers = qa(["Which river?", "Which river?"], [long_context, short_context], top_k=2)
    assert (answers[0][0].text, answers[0][0].start) == ("Seine", long_context.index("Seine"))
    # example 1 has no "seine": its best spans are its own words, never example 0's
    assert all(0 <= a.start < a.end <= len(short_context) and a.text != "Seine" for a in answers[1])
    assert len(answers[1]) == 2


def test_overlapping_features_give_each_span_once(tokenizer):
    # "bridge" falls in the overlap of consecutive features: both find it; the answer lists it once.
    context = f"{FILLER} {FILLER} the old bridge crosses the river. {FILLER} {FILLER}"
    qa = _qa(PointingModel(tokenizer, "bridge", "bridge"), tokenizer, max_length=40, stride=20)
    encoding = qa.tokenize(["which bridge?"], [context])
    bridge = tokenizer.convert_tokens_to_ids("bridge")
    assert sum(bridge in ids for ids in encoding["input_ids"]) >= 2, "the test needs the word in two features"
    answers = qa("which bridge?", context, top_k=5)[0]
    spans = [(a.start, a.end) for a in answers]
    assert len(spans) == len(set(spans)) == 5
    assert answers[0].text == "bridge" and spans[0] == _span(context, "bridge")
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)
    # the pipeline's merge adds the two features' scores of "bridge" (a "probability" above each)
    summed = qa("which bridge?", context, top_k=5, aggregation="pipeline")[0]
    assert summed[0].text == "bridge" and summed[0].score > answers[0].score * 1.5


def test_pipeline_aggregation_adds_same_text_case_insensitively(tokenizer):
    """aggregation="pipeline": "Paris" and "PARIS" are one answer (the first one's offsets) whose
    score is the sum of theirs; aggregation="best" keeps both spans, each with its own score."""
    context = "The capital is Paris and PARIS is a city ."
    qa = _qa(PointingModel(tokenizer, "paris", "paris", high=10.0), tokenizer)
    best = qa("which city?", context, top_k=2, max_answer_len=1)[0]
    assert [(a.text, a.start) for a in best] == [("Paris", 15), ("PARIS", 25)]
    summed = qa("which city?", context, top_k=2, max_answer_len=1, aggregation="pipeline")[0]
    assert (summed[0].text, summed[0].start, summed[0].end) == ("Paris", 15, 20)
    assert summed[0].score == pytest.approx(best[0].score + best[1].score, rel=1e-6)
    assert summed[1].text not in ("Paris", "PARIS")


@pytest.mark.parametrize("cls", [True, False])
def test_probability_softmax_keeps_cls_tokens_only(tokenizer, cls):
    """score="prob": the softmax is over the context's tokens and the tokenizer's CLS token(s), as
    the pipeline's p_mask; a tokenizer without a CLS token (GPT-2, Llama: cls_token_id None) keeps
    only the context, so the first token (here the stub's null logit 9) counts for nothing and the
    null score is 0. (decode_spans alone keeps the first token in the softmax whatever it is.)"""
    context = "The capital of France is Paris."  # 7 tokens: the capital of france is paris .
    qa = _qa(PointingModel(tokenizer, "paris", "paris", high=4.0, null=9.0), tokenizer)
    if not cls:
        qa.cls_token_id = None  # as a tokenizer without one
    answers = qa("Which city?", context, top_k=8, max_answer_len=1, handle_impossible_answer=True)[0]
    assert len(answers) == 8  # the 7 one-token spans and the null
    paris = answers[[a.text for a in answers].index("Paris")]
    [null] = [a for a in answers if not a.text]
    e4, e9 = math.exp(4.0), math.exp(9.0)
    if cls:  # [CLS] (logit 9), "paris" (4) and 6 more context tokens (0) in the softmax
        assert paris.score == pytest.approx((e4 / (e9 + e4 + 6)) ** 2, rel=1e-5)
        assert null.score == pytest.approx((e9 / (e9 + e4 + 6)) ** 2, rel=1e-5) and answers[0] == null
    else:  # "paris" and 6 more context tokens only
        assert paris.score == pytest.approx((e4 / (e4 + 6)) ** 2, rel=1e-5)
        assert null.score == 0.0 and answers[0] == paris


def test_logit_score_keeps_the_first_token_null(tokenizer):
    context = "The capital of France is Paris."
    qa = _qa(PointingModel(tokenizer, "paris", "paris", high=4.0, null=9.0), tokenizer, score="logit")
    answers = qa("Which city?", context, top_k=2, handle_impossible_answer=True)[0]
    assert answers[0] == Answer("", 18.0, 0, 0) and answers[1] == Answer("Paris", 8.0, *_span(context, "Paris"))


@pytest.mark.parametrize("score", ["prob", "logit"])
def test_no_answer(tokenizer, score):
    context = "The capital of France is Paris."
    question = "What flows through it?"
    high_null = PointingModel(tokenizer, "paris", "paris", high=4.0, null=9.0)
    qa = _qa(high_null, tokenizer, score=score)
    answers = qa(question, context, top_k=2, handle_impossible_answer=True)[0]
    assert answers[0] == Answer("", answers[0].score, 0, 0) and answers[1].text == "Paris"
    assert answers[0].score > answers[1].score
    # a threshold above the gap lets the span win; without the option there is no null answer
    gap = answers[0].score - answers[1].score
    answers = qa(question, context, top_k=1, handle_impossible_answer=True, null_threshold=gap * 1.01 + 1e-6)[0]
    assert [a.text for a in answers] == ["Paris"]
    assert all(a.text for a in qa(question, context, top_k=3)[0])


def test_null_threshold_needs_handle_impossible_answer(tokenizer):
    qa = _qa(PointingModel(tokenizer, "paris", "paris"), tokenizer)
    with pytest.raises(ValueError, match=r"null_threshold = 0.5 has no effect without handle_impossible_answer"):
        qa("Which city?", "The capital is Paris.", null_threshold=0.5)
    with pytest.raises(TypeError, match="null_threshold must be a real number"):
        qa("Which city?", "The capital is Paris.", handle_impossible_answer=True, null_threshold="0.5")


@pytest.mark.parametrize("aggregation", ["best", "pipeline"])
def test_merge_features_by_hand(aggregation):
    contexts = ["abcdefghij", "klmnop"]
    # features 0 and 1 belong to example 0, feature 2 to example 1: (first char, end, score), best first
    spans = [
        [(0, 2, 0.5), (2, 3, 0.3)],
        [(2, 3, 0.4), (3, 5, 0.35), (4, 5, 0.1)],
        [(2, 4, 0.9)],
    ]
    null = [0.2, 0.6, 0.05]
    got = merge_features(contexts, [0, 0, 1], spans, null, top_k=3, aggregation=aggregation)
    if aggregation == "best":  # "c" (2, 3) found twice, 0.3 and 0.4: once, with the better score
        assert got[0] == [Answer("ab", 0.5, 0, 2), Answer("c", 0.4, 2, 3), Answer("de", 0.35, 3, 5)]
    else:  # "c": 0.3 + 0.4, above "ab"
        assert got[0] == [Answer("c", 0.3 + 0.4, 2, 3), Answer("ab", 0.5, 0, 2), Answer("de", 0.35, 3, 5)]
    assert got[1] == [Answer("mn", 0.9, 2, 4)]
    # the null score of an example is its features' smallest (0.2), ranked by null - threshold = 0.45
    got = merge_features(contexts, [0, 0, 1], spans, null, top_k=3, handle_impossible_answer=True,
                         null_threshold=-0.25, aggregation=aggregation)  # fmt: skip
    if aggregation == "best":
        assert got[0] == [Answer("ab", 0.5, 0, 2), Answer("", 0.2, 0, 0), Answer("c", 0.4, 2, 3)]
    else:
        assert got[0] == [Answer("c", 0.3 + 0.4, 2, 3), Answer("ab", 0.5, 0, 2), Answer("", 0.2, 0, 0)]
    assert got[1] == [Answer("mn", 0.9, 2, 4), Answer("", 0.05, 0, 0)]


def test_pipeline_merge_keeps_first_offsets_and_stable_ties():
    """The pipeline's merge: same text case-insensitively (str.lower, so Greek capitals too), the first
    candidate's offsets kept; equal sums stay in the order first found."""
    context = "ΣΟΦΙΑ σοφια Ab ab"
    spans = [[(6, 11, 0.25), (0, 5, 0.25)], [(12, 14, 0.25), (15, 17, 0.25)]]
    got = merge_features([context], [0, 0], spans, [0.0, 0.0], top_k=3, aggregation="pipeline")[0]
    assert got == [Answer("σοφια", 0.5, 6, 11), Answer("Ab", 0.5, 12, 14)]


def test_answer_reads_as_the_pipeline_dict():
    answer = Answer("Paris", 0.75, 25, 30)
    assert dict(answer) == answer.to_dict() == {"score": 0.75, "start": 25, "end": 30, "answer": "Paris"}
    assert answer["answer"] == "Paris" and answer["score"] == 0.75
    with pytest.raises(KeyError):
        answer["text"]
    one, two = [[answer]], [[answer, Answer("", 0.1, 0, 0)], [answer]]
    assert pipeline_output(one) == answer.to_dict()  # one example, one answer: a bare dict
    assert pipeline_output(two) == [[answer.to_dict(), {"score": 0.1, "start": 0, "end": 0, "answer": ""}],
                                    answer.to_dict()]  # fmt: skip


def test_call_habits(tokenizer):
    """As the pipeline: question= / context= keywords, one question over several contexts and one
    context for several questions (broadcast), per-call max_answer_len, numpy integers."""
    contexts = ["The capital of France is Paris.", "Many people visit Paris every year."]
    qa = _qa(PointingModel(tokenizer, "paris", "paris"), tokenizer)
    by_keyword = qa(question="Which city?", context=contexts[0])
    assert by_keyword == qa("Which city?", contexts[0]) and by_keyword[0][0].text == "Paris"
    broadcast = qa(question="Which city?", context=contexts)
    assert broadcast == qa(["Which city?"] * 2, contexts) and len(broadcast) == 2
    assert len(qa(question=["Which city?", "Where?"], context=contexts[0])) == 2
    assert len(qa("Which city?", contexts, top_k=np.int64(2))[1]) == 2
    long = PointingModel(tokenizer, "capital", "paris")  # a 5-token span
    qa = _qa(long, tokenizer)
    assert qa("Which city?", contexts[0])[0][0].text == "capital of France is Paris"
    assert qa("Which city?", contexts[0], max_answer_len=np.int32(3))[0][0].text != "capital of France is Paris"
    assert qa([], []) == []


@pytest.mark.parametrize(
    "call, error, message",
    [
        (dict(question="a?", context=None), TypeError, "context is None; expected a str or a sequence of str"),
        (dict(question=["a?", "b?"], context=["c", None]), TypeError,
         r"context\[1\] \(example 1\) must be a str; got None"),
        (dict(question=[None], context=["c"]), TypeError, r"question\[0\] \(example 0\) must be a str; got None"),
        (dict(question=3, context="c"), TypeError, "question must be a str or a sequence of str; got int"),
        (dict(question=["a?", "b?"], context=["only one context"]), ValueError, "pair up"),
        (dict(question="a?", context="c", top_k=0), ValueError, "top_k must be an int >= 1; got 0"),
        (dict(question="a?", context="c", top_k=2.0), TypeError, r"top_k must be an int >= 1; got 2.0 \(float\)"),
        (dict(question="a?", context="c", max_answer_len=0), ValueError, "max_answer_len must be an int >= 1"),
        (dict(question="a?", context="c", aggregation="sum"), ValueError, "aggregation must be one of"),
        (dict(question="a?", context="c", align_to_words=1), TypeError, "align_to_words must be a bool"),
    ],
)  # fmt: skip
def test_bad_call_arguments_name_the_argument(tokenizer, call, error, message):
    qa = _qa(PointingModel(tokenizer, "paris", "paris"), tokenizer)
    with pytest.raises(error, match=f"^QuestionAnswerer: .*{message}"):
        qa(**call)


def test_question_too_long_is_refused_before_tokenizing(tokenizer, monkeypatch):
    """A question that leaves a long context no more room per feature than the stride makes the
    fast tokenizer panic (a PanicException, not an Exception) and lose the batch: refused first,
    naming the example and the limit. A short context that needs no truncation is fine."""
    qa = _qa(PointingModel(tokenizer, "paris", "paris"), tokenizer, max_length=40, stride=8)
    long_question = " ".join(["paris"] * 29)  # 40 - 3 special tokens - 29 = 8 = stride
    context = "the capital " * 30
    calls = []
    monkeypatch.setattr(qa, "tokenize", lambda *a: calls.append(a))
    message = (
        r"^QuestionAnswerer: the question of example 1 is 29 tokens, too long for max_length = 40 and "
        r"stride = 8: .* leaves 8 tokens .* a question of at most 28 tokens fits"
    )
    with pytest.raises(ValueError, match=message):
        qa(["Which city?", long_question], [context, context])
    assert calls == []  # nothing tokenized as a batch
    monkeypatch.undo()
    assert qa(long_question, "paris")[0][0].text == "paris"  # no truncation needed
    assert len(qa(" ".join(["paris"] * 28), context)[0]) == 1  # 9 tokens of room: fits


def test_features_batched_by_length(tokenizer):
    """Features sorted by length into batches, each padded on the right to its own longest, run
    under inference_mode; the answers equal those of one feature per batch, in the caller's order."""
    contexts = [
        "Paris.",
        f"{FILLER} {FILLER} The capital of France is Paris. {FILLER}",
        "The capital of France is Paris.",
        f"{FILLER} Paris {FILLER} {FILLER} {FILLER}",
        "Many people visit Paris.",
    ]
    questions = ["Which city?"] * len(contexts)
    one = PointingModel(tokenizer, "paris", "paris")
    want = _qa(one, tokenizer, max_length=32, stride=8, batch_size=1)(questions, contexts, top_k=2)
    model = PointingModel(tokenizer, "paris", "paris")
    qa = _qa(model, tokenizer, max_length=32, stride=8, batch_size=3)
    got = qa(questions, contexts, top_k=2)
    assert got == want
    lengths = sorted((len(ids) for ids in qa.tokenize(questions, contexts)["input_ids"]), reverse=True)
    widths = [call.input_ids.shape[1] for call in model.calls]
    assert widths == [lengths[i] for i in range(0, len(lengths), 3)]  # each batch's own longest
    assert sum(c.input_ids.numel() for c in model.calls) < len(lengths) * lengths[0]
    for call in model.calls:
        assert call.inference_mode
        real = call.attention_mask.sum(dim=1)
        for row, n in zip(call.attention_mask, real.tolist(), strict=True):  # padded on the right
            assert row[:n].all() and not row[n:].any()


def test_context_first_tokenizer_answers_from_the_context(left_tokenizer):
    """A tokenizer that pads on the left puts the context first (the pipeline's rule); the features
    are still padded on the right, and the candidates lie in the context only (the 4.x pipeline's
    p_mask would also let the question's tokens answer)."""
    model = PointingModel(left_tokenizer, "paris", "paris")
    qa = _qa(model, left_tokenizer, batch_size=2)
    assert not qa.question_first
    answers = qa(["Which city is paris?", "paris?"], ["The capital of France is Paris.", "The old city."], top_k=3)
    assert answers[0][0].text == "Paris"
    assert all(0 <= a.start < a.end and a.text != "paris" for a in answers[1])
    assert model.calls[0].attention_mask[:, 0].all()  # right padding


def test_uses_no_cache_where_forward_takes_it(tokenizer):
    class Cached(PointingModel):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None, use_cache=True):
            assert use_cache is False
            return super().forward(input_ids, attention_mask, token_type_ids)

    qa = _qa(Cached(tokenizer, "paris", "paris"), tokenizer)
    assert qa("Which city?", "The capital is Paris.")[0][0].text == "Paris"


@pytest.mark.parametrize("cls", [True, False])
@pytest.mark.parametrize("fused_head", [False, True])
def test_tiny_bert_matches_transformers_decoding(backend, tokenizer, fused_head, cls):
    """Per feature, without alignment: the spans and scores that transformers' own
    select_starts_ends (the 4.x pipeline's, kept in 5.x for document QA) gives with the pipeline's
    p_mask: 0 on the context and on CLS tokens (none when the tokenizer has no CLS)."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    model = transformers.BertForQuestionAnswering(config)
    with torch.no_grad():
        model.qa_outputs.weight.mul_(40.0)  # peaked logits, a first token that counts
    qa = qa_kernels.QuestionAnswerer(model, tokenizer, max_length=48, stride=16, fused_head=fused_head, batch_size=2)
    if not cls:
        qa.cls_token_id = None
    assert qa.fused_head == fused_head
    questions = ["What is the capital of France?", "Where does the river flow?"]
    contexts = ["The capital of France is Paris.", f"{FILLER} The Seine flows through Paris. {FILLER} {FILLER}"]
    encoding = qa.tokenize(questions, contexts)
    start_logits, end_logits = qa.logits(encoding)
    spans, nulls = qa.decode(encoding, start_logits, end_logits, top_k=4, max_answer_len=15,
                             align_to_words=False, aggregation="pipeline")  # fmt: skip
    assert len(encoding["input_ids"]) >= 3
    for f, ids in enumerate(encoding["input_ids"]):
        n = len(ids)
        p_mask = np.array([[sid != 1 for sid in encoding.sequence_ids(f)]], dtype=np.int64)
        if cls:
            p_mask[0, np.array(ids) == tokenizer.cls_token_id] = 0
        starts, ends, scores, null = select_starts_ends(
            start_logits[f : f + 1, :n].numpy(), end_logits[f : f + 1, :n].numpy(), p_mask,
            np.ones((1, n), dtype=np.int64), top_k=4, max_answer_len=15, handle_impossible_answer=True,
        )  # fmt: skip
        offsets = encoding["offset_mapping"][f]
        want = [(offsets[i][0], offsets[j][1]) for i, j in zip(starts.tolist(), ends.tolist(), strict=True)]
        assert [(a, b) for a, b, _ in spans[f]] == want, f"feature {f}"
        np.testing.assert_allclose([s for _, _, s in spans[f]], scores, rtol=1e-5)
        np.testing.assert_allclose(nulls[f], null, rtol=1e-5, atol=1e-30)
        if not cls:
            assert nulls[f] == 0.0
    answers = qa(questions, contexts, top_k=4)
    assert all(a.text == contexts[e][a.start : a.end] for e, row in enumerate(answers) for a in row)


def test_bad_arguments(tokenizer):
    model = PointingModel(tokenizer, "paris", "paris")
    with pytest.raises(ValueError, match="stride"):
        _qa(model, tokenizer, max_length=16, stride=16)
    with pytest.raises(ValueError, match="score must be one of"):
        _qa(model, tokenizer, score="softmax")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        _qa(model, tokenizer, aggregation="max")


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
        (dict(align_to_words=None), TypeError, "align_to_words must be a bool; got None (NoneType)"),
        (dict(aggregation="sum"), ValueError, "aggregation must be one of ('best', 'pipeline'); got 'sum'"),
    ],
)
def test_bad_numeric_arguments_name_the_argument(tokenizer, kwargs, error, message):
    """Each integer argument is checked for type and range (the flags for type); the error names the
    argument, what it got and what is expected. Nothing is done to the model before the checks pass."""
    model = PointingModel(tokenizer, "paris", "paris").train()
    with pytest.raises(error) as info:
        qa_kernels.QuestionAnswerer(model, tokenizer, **{"fused_head": False, **kwargs})
    assert str(info.value) == f"QuestionAnswerer: {message}"
    assert model.training


def test_numpy_integers_are_accepted(tokenizer):
    model = PointingModel(tokenizer, "paris", "paris")
    qa = _qa(model, tokenizer, max_length=np.int64(32), stride=np.int32(8), max_answer_len=np.int16(5))
    assert (qa.max_length, qa.stride, qa.max_answer_len) == (32, 8, 5)
    assert all(type(v) is int for v in (qa.max_length, qa.stride, qa.max_answer_len, qa.batch_size))
    assert qa("Which city?", "The capital of France is Paris.")[0][0].text == "Paris"


def test_empty_context_has_no_spans(tokenizer):
    qa = _qa(PointingModel(tokenizer, "paris", "paris"), tokenizer)
    assert qa("Which city?", "") == [[]]
    [[null]] = qa("Which city?", "", handle_impossible_answer=True)
    assert null.text == "" and math.isfinite(null.score)


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
