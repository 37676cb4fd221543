"""QuestionAnswerer against the real transformers 4.x ``question-answering`` pipeline, answer by
answer: the same tiny random models and the same tokenizers on both sides (built here, offline), the
pipeline run in a transformers 4.x Python (tests/pipeline_reference.py says how to make one; without
it these tests skip and say why).

Tokenizers: WordPiece (uncased and cased) wrapped in BertTokenizerFast, a byte-level BPE wrapped in
GPT2TokenizerFast (no CLS token: the decoder-only case), each trained on the text below. Models: a
BERT and a GPT-2 QA model, random, their QA head scaled up so that the logits are peaked and the
first token's logit is not negligible. Examples: accents, Greek, CJK, currency, a long word split
into many pieces, the same word in several cases, contexts that overflow into several features.

Compared: text and character offsets exactly, in order (answers whose reference scores lie within
the tolerance of each other may come in either order); scores within RTOL relative. Each
``aggregation="pipeline"`` call against the pipeline itself; each ``aggregation="best"`` call
against the pipeline with its merge changed to "best score per character span" (all else 4.x's
code, see tests/pipeline_reference.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import qa_kernels
from tests.pipeline_reference import reference_python, run_reference

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

RTOL = 1e-4  # relative, on every score

LONG = (
    "Gothenburg is the second-largest city in Sweden. It lies on the west coast, where the river "
    "Göta älv meets the sea. The old harbour once sent iron, timber and tea across the North Sea; "
    "today the port is the largest in the Nordic countries. Trams have run here since 1879, and the "
    "Liseberg park opened in 1923. Every August the city hosts a culture festival, and in winter the "
    "harbour lights are reflected in the dark water. The university was founded in 1891."
)
EXAMPLES = [
    ("What is the capital of France?",
     "The capital of France is Paris. PARIS is also its largest city, and paris hosts the Eiffel Tower."),
    ("Where is the port city?",
     "Göteborg, also called Gothenburg, is a port city in Sweden; Göteborg lies on the west coast."),
    ("Ποιο είναι το πρώτο γράμμα;",
     "Το άλφα (Άλφα) είναι το πρώτο γράμμα· ακολουθεί το βήτα. Άλφα και Ωμέγα, αρχή και τέλος."),  # noqa: RUF001 (Greek)
    ("東京タワーの高さは?", "東京タワーは東京都港区にある電波塔です。高さは333メートルです。東京で二番目に高い。"),
    ("How much does a ticket cost in London?",
     "The ticket costs €12.50 in Paris, £10 in London and ¥1,500 in Tokyo; children pay $5 everywhere."),
    ("Which word is long?",
     "The word antidisestablishmentarianism is unbelievably long; antidisestablishmentarianism has 28 letters."),
    ("   When was the university founded?", LONG),
    ("When did the Liseberg park open?", f"{LONG} {LONG}"),
    ("What is served at the café?",
     "Crème brûlée and café au lait are served at the Café de Flore in Saint-Germain-des-Prés, Paris."),
    ("Is it open?", "Yes, since 1999, every day."),
]  # fmt: skip
CORPUS = [text for example in EXAMPLES for text in example] + [
    "Paris London Tokyo Sweden Gothenburg harbour festival university founded opened long word letters",
]


@dataclass
class Call:
    """One pipeline call over every example, and the QuestionAnswerer call that must match it."""

    name: str
    pipeline: dict[str, Any]  # the pipeline's keyword arguments
    merge: str  # "sum": the pipeline itself; "max": its merge changed to the best score per span
    ours: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of our call

    @property
    def max_length(self) -> int:
        return int(self.pipeline["max_seq_len"])

    @property
    def stride(self) -> int:
        return int(self.pipeline["doc_stride"])

    def our_kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.pipeline.items() if k not in ("max_seq_len", "doc_stride")}
        return {**kwargs, "aggregation": "pipeline" if self.merge == "sum" else "best", **self.ours}


CALLS = [
    Call("pipeline 64/16 top3", dict(top_k=3, max_seq_len=64, doc_stride=16), "sum"),
    Call("pipeline 64/16 top3 unaligned", dict(top_k=3, max_seq_len=64, doc_stride=16, align_to_words=False), "sum"),
    Call("pipeline 384/128 top1", dict(top_k=1, max_seq_len=384, doc_stride=128), "sum"),
    Call("pipeline 384/128 top3 len4", dict(top_k=3, max_seq_len=384, doc_stride=128, max_answer_len=4), "sum"),
    Call("pipeline 48/8 top2 null", dict(top_k=2, max_seq_len=48, doc_stride=8, handle_impossible_answer=True), "sum"),
    Call("best 64/16 top3", dict(top_k=3, max_seq_len=64, doc_stride=16), "max"),
    Call("best 384/128 top1", dict(top_k=1, max_seq_len=384, doc_stride=128), "max"),
    Call("best 48/8 top2 null unaligned",
         dict(top_k=2, max_seq_len=48, doc_stride=8, handle_impossible_answer=True, align_to_words=False), "max"),
]  # fmt: skip


def _wordpiece(directory, lowercase: bool):
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, tokenizers.trainers.WordPieceTrainer(vocab_size=420, special_tokens=specials))
    tok.model.save(str(directory))
    return "BertTokenizerFast", {"do_lower_case": lowercase}


def _byte_level_bpe(directory):
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=520, special_tokens=["<|endoftext|>"])
    tok.save_model(str(directory))
    return "GPT2TokenizerFast", {}


def _model(kind: str, vocab_size: int):
    torch.manual_seed(0)
    if kind == "bert":
        config = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512, attn_implementation="eager")  # fmt: skip
        names = ("BertConfig", "BertForQuestionAnswering")
    else:
        config = dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=512, bos_token_id=0,
                      eos_token_id=0, attn_implementation="eager")  # fmt: skip
        names = ("GPT2Config", "GPT2ForQuestionAnswering")
    model = getattr(transformers, names[1])(getattr(transformers, names[0])(**config)).eval()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(40.0)  # peaked logits: clear winners, a first token that matters
    return names, config, model


SETUPS = {"bert-uncased": ("bert", True), "bert-cased": ("bert", False), "gpt2": ("gpt2", None)}


@pytest.fixture(scope="module", params=list(SETUPS))
def setup(request, tmp_path_factory):
    """(tokenizer, state dict, model factory, the reference's output) for one tokenizer and model."""
    python, why = reference_python()
    if python is None:
        pytest.skip(why)
    kind, lowercase = SETUPS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    class_name, kwargs = _wordpiece(directory, lowercase) if kind == "bert" else _byte_level_bpe(directory)
    tokenizer = getattr(transformers, class_name).from_pretrained(str(directory), **kwargs)
    (config_class, model_class), config, model = _model(kind, len(tokenizer))
    torch.save(model.state_dict(), directory / "model.pt")
    job = {
        "tokenizer": {"class": class_name, "dir": str(directory), "kwargs": kwargs},
        "model": {"class": model_class, "config_class": config_class, "config": config,
                  "state_dict": str(directory / "model.pt")},
        "examples": [{"question": q, "context": c} for q, c in EXAMPLES],
        "calls": [{"kwargs": call.pipeline, "merge": call.merge} for call in CALLS],
    }  # fmt: skip
    reference = run_reference(python, job, directory)
    assert reference["versions"]["transformers"].startswith("4."), reference["versions"]
    return tokenizer, model, reference


def _groups(scores: list[float]) -> list[list[int]]:
    """Indices of consecutive scores within RTOL of each other (their order is noise)."""
    groups: list[list[int]] = []
    for i, s in enumerate(scores):
        if groups and abs(scores[groups[-1][-1]] - s) <= RTOL * max(abs(s), abs(scores[groups[-1][-1]])):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def assert_same_answers(got, want: list[dict[str, Any]], where: str) -> None:
    """``got`` (Answers) equals ``want`` (the pipeline's dicts): text and offsets exactly, in order up
    to reference scores within RTOL of each other; scores within RTOL."""
    got_rows = [(a.text, a.start, a.end) for a in got]
    want_rows = [(w["answer"], w["start"], w["end"]) for w in want]
    assert len(got_rows) == len(want_rows), f"{where}: {got_rows} != {want_rows}"
    for group in _groups([w["score"] for w in want]):
        assert sorted(got_rows[i] for i in group) == sorted(want_rows[i] for i in group), (
            f"{where}: answers {got_rows} != pipeline {want_rows}"
        )
    torch.testing.assert_close(
        torch.tensor([a.score for a in got], dtype=torch.float64),
        torch.tensor([w["score"] for w in want], dtype=torch.float64),
        rtol=RTOL, atol=0.0, msg=lambda m: f"{where}: {m}",
    )  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("call", CALLS, ids=[call.name for call in CALLS])
def test_answers_equal_the_pipeline(setup, call, batch_size):
    tokenizer, model, reference = setup
    want = reference["runs"][CALLS.index(call)]
    qa = qa_kernels.QuestionAnswerer(
        model, tokenizer, max_length=call.max_length, stride=call.stride, batch_size=batch_size, fused_head=True
    )
    questions, contexts = [q for q, _ in EXAMPLES], [c for _, c in EXAMPLES]
    encoding = qa.tokenize(questions, contexts)
    samples = encoding["overflow_to_sample_mapping"]
    pairs = list(zip(encoding["input_ids"], samples, strict=True))
    features = [[ids for ids, s in pairs if s == e] for e in range(len(EXAMPLES))]
    assert features == reference["features"][CALLS.index(call)], "4.x tokenized differently: no comparison"
    got = qa(questions, contexts, **call.our_kwargs())
    for example, (ours, theirs) in enumerate(zip(got, want, strict=True)):
        assert_same_answers(ours, theirs, f"{call.name}, example {example} {EXAMPLES[example][0]!r}")


def test_the_examples_overflow_and_the_pipeline_sums(setup):
    """The set is varied enough to mean something: contexts in several features, summed scores above
    a single candidate's (the pipeline's merge decides something), and, with the default merge,
    top-1 answers equal to the pipeline's wherever its merge does not decide them."""
    tokenizer, model, reference = setup
    qa = qa_kernels.QuestionAnswerer(model, tokenizer, max_length=64, stride=16)
    encoding = qa.tokenize([q for q, _ in EXAMPLES], [c for _, c in EXAMPLES])
    assert max(encoding["overflow_to_sample_mapping"].count(e) for e in range(len(EXAMPLES))) >= 4
    summed = reference["runs"][0]  # "pipeline 64/16 top3"
    best = reference["runs"][5]  # "best 64/16 top3": the same settings, merged by best score per span
    assert CALLS[0].pipeline == CALLS[5].pipeline
    pairs = [(s, b) for ss, bb in zip(summed, best, strict=True) for s, b in zip(ss, bb, strict=True)]
    assert any(s["score"] > b["score"] * (1 + RTOL) for s, b in pairs)
    got = qa([q for q, _ in EXAMPLES], [c for _, c in EXAMPLES], top_k=3)  # defaults: best, aligned
    agree = 0
    for ours, s, b in zip(got, summed, best, strict=True):
        if (s[0]["answer"], s[0]["start"]) == (b[0]["answer"], b[0]["start"]):  # the merge does not decide
            assert (ours[0].text, ours[0].start, ours[0].end) == (s[0]["answer"], s[0]["start"], s[0]["end"])
            agree += 1
    assert agree >= len(EXAMPLES) // 2, agree
