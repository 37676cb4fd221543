"""Batched extractive question answering with a transformers model: what transformers 4.x's
``question-answering`` pipeline did (it is gone from 5.x), with the span decoding on the model's
device.

Per call: tokenize every (question, context) pair with truncation and a stride, so a long context
overflows into several features; run the model over the features in batches of similar length,
each padded on the right to its own longest feature; decode every feature at once with
:func:`qa_kernels.decode_spans` (one small host copy of the top-k, never the logits); map each span's
tokens back to characters of the context, snapped to whole words (``align_to_words``); merge the
features of each example (``aggregation``).

Where each rule comes from (transformers 4.57, ``pipelines/question_answering.py``; "the pipeline"
below):

- features: ``tokenizer(question, context, truncation="only_second", max_length, stride,
  return_overflowing_tokens=True)``, question first when the tokenizer pads on the right, context
  first otherwise; the question is not stripped (the pipeline does not strip it).
- ``score="prob"``: a softmax over the start (and the end) logits of the tokens that may be in an
  answer -- the context's tokens -- and of every token whose id is the tokenizer's ``cls_token_id``,
  wherever it is (the pipeline's ``p_mask``: 0 for them, 1 elsewhere; others get -10000). Without a
  CLS token (GPT-2, Llama), only the context's tokens. The span score is ``p_start[i] * p_end[j]``;
  spans lie in the context (and, as in the pipeline, may start or end on a CLS token other than
  the first token). The null score is the first token's ``p_start[0] * p_end[0]`` -- zero, in
  effect, when the first token is not a CLS token -- and an example's null score is the smallest of
  its features'.
- ``align_to_words``: the pipeline's ``get_indices``: ``token_to_word`` on both ends, then
  ``word_to_chars`` of those words in the context (the words of the feature: a word cut by the
  feature's edge gives its characters in that feature); the raw token offsets where that fails (a
  tokenizer without words, a special token).
- ``aggregation="pipeline"``: the pipeline's merge (see :class:`QuestionAnswerer`).
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

import numpy as np
import torch

from ._checks import check_int
from .ops.decode_spans import decode_spans
from .ops.decode_spans.keys import MASKED_LOGIT, SCORES

if TYPE_CHECKING:
    from transformers import BatchEncoding

AGGREGATIONS = ("best", "pipeline")

CharSpan = tuple[int, int, float]  # (first character, one past the last, score) of one candidate


@dataclass(frozen=True)
class Answer:
    """One answer: ``context[start:end] == text``; the null answer is ``("", null score, 0, 0)``.

    Also readable as the pipeline's dict: ``answer["answer"]`` (the text), ``answer["score"]``,
    ``answer["start"]``, ``answer["end"]``, and ``dict(answer)`` or :meth:`to_dict` give
    ``{"score", "start", "end", "answer"}`` exactly as the 4.x pipeline returned them.
    """

    text: str
    score: float
    start: int  # first character in the context
    end: int  # one past the last character

    _KEYS: ClassVar[tuple[str, ...]] = ("score", "start", "end", "answer")

    def keys(self) -> tuple[str, ...]:
        return self._KEYS

    def __getitem__(self, key: str) -> Union[str, float, int]:
        if key == "answer":
            return self.text
        if key in ("score", "start", "end"):
            value: Union[float, int] = getattr(self, key)
            return value
        raise KeyError(key)

    def to_dict(self) -> dict[str, Union[str, float, int]]:
        """``{"score": ..., "start": ..., "end": ..., "answer": ...}``: the pipeline's answer dict."""
        return {key: self[key] for key in self._KEYS}


def pipeline_output(answers: Sequence[Sequence[Answer]]) -> Any:
    """``answers`` (what :class:`QuestionAnswerer` returns) in the 4.x pipeline's shapes: per example
    a dict when it has exactly one answer and a list of dicts otherwise; the bare per-example value
    when there is one example, a list of them otherwise. (The shape then depends on how many answers
    were found, which is why :class:`QuestionAnswerer` itself always returns lists.)"""
    rows = [row[0].to_dict() if len(row) == 1 else [a.to_dict() for a in row] for row in answers]
    return rows[0] if len(rows) == 1 else rows


def _texts(name: str, value: Any) -> Union[str, list[str]]:
    """``value`` as one str or a list of str; an error naming the argument and the example."""
    if isinstance(value, str):
        return value
    if value is None:
        raise TypeError(f"QuestionAnswerer: {name} is None; expected a str or a sequence of str")
    if not isinstance(value, Iterable):
        raise TypeError(f"QuestionAnswerer: {name} must be a str or a sequence of str; got {type(value).__name__}")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"QuestionAnswerer: {name}[{i}] (example {i}) must be a str; got {item!r}")
    return items


class QuestionAnswerer:
    """Answers batches of (question, context) pairs with an extractive QA model.

    The caller's model object itself is changed, in place, by the constructor: it is switched to
    eval mode (``model.eval()``, as the pipeline did), and with ``fused_head=True`` (the default) a
    supported model is patched with :func:`qa_kernels.patch`, so it keeps running the fused head
    after the answerer is gone, in training too. No copy is made. To get the model back as it was,
    call ``qa_kernels.unpatch(model)`` and ``model.train()`` if it was training; to leave it
    untouched, pass ``copy.deepcopy(model)`` (or ``fused_head=False``, which still sets eval mode).

    Batching: the features of a call are sorted by length and cut into batches of ``batch_size``;
    each batch is padded on the right to its own longest feature (whatever the tokenizer's
    ``padding_side``, which only decides whether the question or the context comes first, as in the
    pipeline), so a model sees each feature at the positions it would have unpadded; the results
    come back in the caller's order. The model runs under ``torch.inference_mode()``, with
    ``use_cache=False`` where its ``forward`` takes it (as the pipeline).

    Aggregation (how the candidates of an example's features become its answers):

    - ``"best"`` (default): each character span once, with the best score any feature gave it;
      ranked by score (ties: the earlier span). Exact: each feature is decoded deep enough to hold
      ``top_k`` distinct character spans (deeper when alignment maps several token spans to one).
    - ``"pipeline"``: 4.x's merge, for parity. Each feature gives its best ``2 * top_k + 10`` token
      spans (``top_k`` with ``align_to_words=False``), best first, features in order; a candidate
      whose text equals, case-insensitively (``str.lower``), the text of an answer already listed
      adds its score onto that answer (which keeps its first offsets), otherwise it is listed; the
      answers are then sorted by score (stable). Sums of probabilities: a score can exceed 1, and
      the same text at several places (or in overlapping features) ranks above a text found once.

    Known differences from the pipeline, both modes: where a feature has fewer spans than it asks
    for, the pipeline fills its list with zero-score non-spans (end before start, longer than
    ``max_answer_len``) that can show up as answers of score 0 when ``top_k`` exceeds the real ones;
    here the list is just shorter. A tokenizer that pads on the left (context first): the pipeline's
    ``p_mask`` is then all zeros, so every token, the question's and special tokens too, is in its
    softmax and a candidate (it can "answer" with a question token); here the rule above holds for
    both orders: candidates in the context, the context and CLS tokens in the softmax.

    Args:
        model: a transformers ``*ForQuestionAnswering`` model (any module whose output has
            ``start_logits`` and ``end_logits``, or is a tuple starting with them). Put in eval mode
            and, with ``fused_head=True``, patched in place (see above).
        tokenizer: its fast tokenizer (the offset mapping needs one).
        max_length: tokens per feature (question, context part and special tokens): an int >= 1.
        stride: tokens of context shared by consecutive features of one long context: an int in
            ``[0, max_length)``.
        max_answer_len: the longest answer, in tokens: an int >= 1 (per call too).
        score: ``"prob"`` (the pipeline: start x end probabilities, its CLS rule, see the module
            docstring) or ``"logit"`` (the SQuAD examples: start + end logits over the context's
            tokens; null score: the first token's start + end logit).
        batch_size: features per forward pass: an int >= 1.
        fused_head: patch the model with the fused QA head when it is supported; an unsupported
            model runs unfused, with a warning.
        align_to_words: snap both ends of an answer to whole words, as the pipeline's default
            ``align_to_words=True`` (per call too).
        aggregation: ``"best"`` or ``"pipeline"`` (above; per call too).

    Raises:
        TypeError: a tokenizer that is not fast; an integer argument that is not an int (a bool, a
            float such as ``3.5``, a string such as ``"384"``); a flag that is not a bool.
        ValueError: an integer argument out of its range; an unknown ``score`` or ``aggregation``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 384,
        stride: int = 128,
        max_answer_len: int = 15,
        score: str = "prob",
        batch_size: int = 32,
        fused_head: bool = True,
        align_to_words: bool = True,
        aggregation: str = "best",
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"QuestionAnswerer needs a fast tokenizer (for the offset mapping); got {type(tokenizer).__name__}"
            )
        if not isinstance(score, str) or score not in SCORES:
            raise ValueError(f"QuestionAnswerer: score must be one of {SCORES}; got {score!r}")
        max_length = check_int("max_length", max_length, where="QuestionAnswerer: ", low=1)
        stride = check_int(
            "stride", stride, where="QuestionAnswerer: ", low=0, high=max_length, high_name=f"max_length = {max_length}"
        )
        max_answer_len = check_int("max_answer_len", max_answer_len, where="QuestionAnswerer: ", low=1)
        batch_size = check_int("batch_size", batch_size, where="QuestionAnswerer: ", low=1)
        _check_bool("fused_head", fused_head)
        _check_bool("align_to_words", align_to_words)
        _check_aggregation(aggregation)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.max_answer_len = max_answer_len
        self.score = score
        self.batch_size = batch_size
        self.align_to_words = align_to_words
        self.aggregation = aggregation
        # A question-first tokenizer pads on the right (transformers' pipeline rule).
        self.question_first = tokenizer.padding_side == "right"
        self.cls_token_id: Optional[int] = getattr(tokenizer, "cls_token_id", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = 0 if pad is None else int(pad)  # masked by the attention mask anyway
        self._pad_type_id = int(getattr(tokenizer, "pad_token_type_id", 0) or 0)
        try:
            self._use_cache = "use_cache" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self._use_cache = False
        self.fused_head = fused_head and self._patch(model)

    @staticmethod
    def _patch(model: torch.nn.Module) -> bool:
        from .integrations import patch

        try:
            patch(model)
        except TypeError as error:  # UnsupportedModelError: an unknown or customized model
            warnings.warn(f"QuestionAnswerer: running {type(model).__name__} unfused ({error})", stacklevel=3)
            return False
        return True

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def check_lengths(self, questions: Sequence[str], contexts: Sequence[str]) -> None:
        """ValueError naming the first example whose question leaves no room for a stride: the
        context's share of a feature, ``max_length - question tokens - special tokens``, must exceed
        ``stride`` wherever the context overflows (the fast tokenizer panics otherwise, a
        ``PanicException`` that ``except Exception`` does not catch, and takes the whole batch down).
        Tokenizes the questions alone, and the contexts only of the examples at risk."""
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        room = self.max_length - specials - self.stride  # a question must be shorter than this
        lengths = [len(ids) for ids in self.tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
        at_risk = [i for i, n in enumerate(lengths) if n >= room]
        if not at_risk:
            return
        context_lengths = self.tokenizer([contexts[i] for i in at_risk], add_special_tokens=False)["input_ids"]
        for i, ids in zip(at_risk, context_lengths, strict=True):
            if lengths[i] + len(ids) + specials > self.max_length:  # it overflows: truncation needs room
                raise ValueError(
                    f"QuestionAnswerer: the question of example {i} is {lengths[i]} tokens, too long for "
                    f"max_length = {self.max_length} and stride = {self.stride}: with {specials} special "
                    f"tokens it leaves {self.max_length - specials - lengths[i]} tokens per feature for a "
                    f"context of {len(ids)} tokens, which must be more than the stride; a question of at "
                    f"most {max(room - 1, 0)} tokens fits (or raise max_length, or lower stride)"
                )

    def tokenize(self, questions: Sequence[str], contexts: Sequence[str]) -> BatchEncoding:
        """The features, unpadded (lists): a ``BatchEncoding`` with ``overflow_to_sample_mapping`` and
        ``offset_mapping``; ``encoding.encodings[f]`` is feature ``f``'s ``tokenizers.Encoding``."""
        first, second = (questions, contexts) if self.question_first else (contexts, questions)
        try:
            return self.tokenizer(
                list(first), list(second),
                truncation="only_second" if self.question_first else "only_first",
                max_length=self.max_length, stride=self.stride, padding=False,
                return_overflowing_tokens=True, return_offsets_mapping=True,
            )  # fmt: skip
        except BaseException as error:  # a Rust panic is a BaseException: say what it was about
            if type(error).__name__ != "PanicException":
                raise
            raise RuntimeError(f"QuestionAnswerer: the tokenizer panicked: {error}") from None

    def _sequence_ids(self, encoding: BatchEncoding) -> list[list[Optional[int]]]:
        return [encoding.sequence_ids(f) for f in range(len(encoding["input_ids"]))]

    def context_mask(self, encoding: BatchEncoding) -> torch.Tensor:
        """``(F, S)`` bool, S the longest feature: the tokens of each feature that belong to the context."""
        return torch.from_numpy(self._masks(encoding)[0])

    def _masks(self, encoding: BatchEncoding) -> tuple[np.ndarray, np.ndarray]:
        """``(F, S)`` bool: the context's tokens; and the tokens that the pipeline keeps in its
        softmax (``p_mask == 0``): the context's and those with the CLS token's id."""
        context_id = 1 if self.question_first else 0
        ids = encoding["input_ids"]
        S = max((len(row) for row in ids), default=0)
        context = np.zeros((len(ids), S), dtype=np.bool_)
        in_softmax = np.zeros((len(ids), S), dtype=np.bool_)
        for f, sequence_ids in enumerate(self._sequence_ids(encoding)):
            n = len(sequence_ids)
            context[f, :n] = [sid == context_id for sid in sequence_ids]
            in_softmax[f, :n] = context[f, :n]
            if self.cls_token_id is not None:
                in_softmax[f, :n] |= np.asarray(ids[f]) == self.cls_token_id
        return context, in_softmax

    @torch.inference_mode()
    def logits(self, encoding: BatchEncoding) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F, S)`` start and end logits of every feature in the encoding's order, S the longest
        feature, on the model's device; past a feature's own length: -10000. The features run
        sorted by length, ``batch_size`` at a time, each batch padded to its longest."""
        device = self.device
        ids = encoding["input_ids"]
        F = len(ids)
        lengths = np.array([len(row) for row in ids], dtype=np.int64)
        S = int(lengths.max(initial=0))
        names = [k for k in self.tokenizer.model_input_names if k in encoding]
        pad = {"input_ids": self._pad_id, "token_type_ids": self._pad_type_id}
        order = np.argsort(-lengths, kind="stable")  # longest first: a batch too big fails at once
        start_all: Optional[torch.Tensor] = None
        end_all: Optional[torch.Tensor] = None
        for lo in range(0, F, self.batch_size):
            rows = order[lo : lo + self.batch_size]
            width = int(lengths[rows[0]])
            inputs: dict[str, Any] = {}
            for name in names:
                batch = np.full((len(rows), width), pad.get(name, 0), dtype=np.int64)
                for r, f in enumerate(rows.tolist()):
                    batch[r, : lengths[f]] = encoding[name][f]
                inputs[name] = torch.from_numpy(batch).to(device)
            if self._use_cache:
                inputs["use_cache"] = False
            out = self.model(**inputs)
            start, end = (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else (out[0], out[1])
            if start_all is None or end_all is None:
                start_all = torch.full((F, S), MASKED_LOGIT, dtype=start.dtype, device=start.device)
                end_all = torch.full((F, S), MASKED_LOGIT, dtype=end.dtype, device=end.device)
            index = torch.from_numpy(rows).to(start.device)
            start_all[index, :width] = start
            end_all[index, :width] = end
        if start_all is None or end_all is None:
            empty = torch.empty((0, 0), device=device)
            return empty, empty
        return start_all, end_all

    def __call__(
        self,
        question: Union[str, Sequence[str]],
        context: Union[str, Sequence[str]],
        *,
        top_k: int = 1,
        handle_impossible_answer: bool = False,
        null_threshold: Optional[float] = None,
        max_answer_len: Optional[int] = None,
        align_to_words: Optional[bool] = None,
        aggregation: Optional[str] = None,
    ) -> list[list[Answer]]:
        """The ``top_k`` best answers of each (question, context) pair, best first (a shorter list
        when the context has fewer spans): always a list per example, inside a list, even for one
        example (:func:`pipeline_output` gives the pipeline's dict-or-list shapes).

        ``question`` and ``context``: a str each (one example), sequences of the same length, or one
        str and a sequence (the str is asked of / searched for each item), positionally or as
        ``qa(question=..., context=...)``. ``max_answer_len``, ``align_to_words`` and
        ``aggregation`` default to the constructor's.

        With ``handle_impossible_answer`` the null answer ``Answer("", null_score, 0, 0)`` takes part:
        it ranks first when ``null_score > best_span_score + null_threshold`` (SQuAD v2 style; the
        threshold is tuned on a dev set; the default, 0.0, is the pipeline's rule), and among the
        spans by ``null_score - null_threshold`` otherwise. ``null_threshold`` without
        ``handle_impossible_answer`` is an error.

        Raises:
            TypeError: a question or context that is not a str (None included), naming the example;
                ``top_k`` or ``max_answer_len`` not an int; a flag not a bool.
            ValueError: sequences that do not pair up; ``top_k`` or ``max_answer_len`` < 1; an
                unknown ``aggregation``; ``null_threshold`` without ``handle_impossible_answer``; a
                question too long for ``max_length`` and ``stride`` (checked before tokenizing,
                naming the example and the limit).
        """
        q = _texts("question", question)
        c = _texts("context", context)
        if isinstance(q, str) and isinstance(c, str):
            questions, contexts = [q], [c]
        elif isinstance(q, str):
            questions, contexts = [q] * len(c), list(c)
        elif isinstance(c, str):
            questions, contexts = q, [c] * len(q)
        else:
            questions, contexts = q, c
        if len(questions) != len(contexts):
            raise ValueError(
                f"QuestionAnswerer: questions and contexts must pair up (or one of them be a single str); "
                f"got {len(questions)} and {len(contexts)}"
            )
        top_k = check_int("top_k", top_k, where="QuestionAnswerer: ", low=1)
        max_answer_len = (
            self.max_answer_len
            if max_answer_len is None
            else check_int("max_answer_len", max_answer_len, where="QuestionAnswerer: ", low=1)
        )
        align = self.align_to_words if align_to_words is None else _check_bool("align_to_words", align_to_words)
        aggregation = self.aggregation if aggregation is None else _check_aggregation(aggregation)
        _check_bool("handle_impossible_answer", handle_impossible_answer)
        if null_threshold is not None:
            if not handle_impossible_answer:
                raise ValueError(
                    f"QuestionAnswerer: null_threshold = {null_threshold!r} has no effect without "
                    f"handle_impossible_answer=True"
                )
            if isinstance(null_threshold, bool) or not isinstance(null_threshold, numbers.Real):
                raise TypeError(f"QuestionAnswerer: null_threshold must be a real number; got {null_threshold!r}")
        threshold = 0.0 if null_threshold is None else float(null_threshold)
        if not questions:
            return []
        self.check_lengths(questions, contexts)
        encoding = self.tokenize(questions, contexts)
        start_logits, end_logits = self.logits(encoding)
        spans, null_scores = self.decode(
            encoding, start_logits, end_logits,
            top_k=top_k, max_answer_len=max_answer_len, align_to_words=align, aggregation=aggregation,
        )  # fmt: skip
        return merge_features(
            contexts, encoding["overflow_to_sample_mapping"], spans, null_scores,
            top_k=top_k, handle_impossible_answer=handle_impossible_answer, null_threshold=threshold,
            aggregation=aggregation,
        )  # fmt: skip

    def decode(
        self,
        encoding: BatchEncoding,
        start_logits: torch.Tensor,
        end_logits: torch.Tensor,
        *,
        top_k: int,
        max_answer_len: int,
        align_to_words: bool,
        aggregation: str,
    ) -> tuple[list[list[CharSpan]], list[float]]:
        """Per feature, its candidates as character spans of the context, best first, and its null
        score: :func:`decode_spans` on the device, then the token spans mapped to characters."""
        F, S = start_logits.shape
        if F == 0:
            return [], []
        context, in_softmax = self._masks(encoding)
        device = start_logits.device
        if self.score == "prob":
            # decode_spans keeps token 0 in the softmax, and the candidates (context_mask) too:
            # the pipeline's softmax is in_softmax, its candidates in_softmax less token 0 (whose
            # probability it zeroes). So: candidates = in_softmax less token 0, and where token 0
            # is not in the pipeline's softmax, its logits become the pipeline's -10000.
            candidates = in_softmax.copy()
            candidates[:, 0] = False
            outside = torch.from_numpy(~in_softmax[:, 0]).to(device)
            column = torch.zeros(S, dtype=torch.bool, device=device)
            column[0] = True
            drop = outside[:, None] & column[None, :]
            start_logits = torch.where(drop, MASKED_LOGIT, start_logits)
            end_logits = torch.where(drop, MASKED_LOGIT, end_logits)
        else:
            candidates = context
        mask = torch.from_numpy(candidates).to(device)
        most = S * min(max_answer_len, S)  # the most spans a row holds
        depth = min(2 * top_k + 10 if align_to_words else top_k, most)
        encodings = encoding.encodings
        if encodings is None:
            raise TypeError("QuestionAnswerer: the encoding has no tokenizers.Encoding (not from a fast tokenizer)")
        offsets = encoding["offset_mapping"]
        sequence_index = 1 if self.question_first else 0
        spans: list[list[CharSpan]] = [[] for _ in range(F)]
        null_scores: list[float] = [0.0] * F
        rows = list(range(F))
        while rows:
            index = torch.tensor(rows, device=device)
            out = decode_spans(
                start_logits[index], end_logits[index], context_mask=mask[index],
                max_answer_len=max_answer_len, top_k=depth, score=self.score,
            )  # fmt: skip
            starts, ends, scores = out.starts.tolist(), out.ends.tolist(), out.scores.tolist()
            nulls = out.null_scores.tolist()
            deeper = []
            for r, f in enumerate(rows):
                null_scores[f] = nulls[r]
                found = []
                for i, j, s in zip(starts[r], ends[r], scores[r], strict=True):
                    if i < 0:
                        break
                    a, b = _char_span(encodings[f], offsets[f], i, j, sequence_index, align_to_words)
                    found.append((a, b, s))
                spans[f] = found
                # "best" is exact only if the feature lists top_k distinct character spans (or all
                # of its spans): alignment (or tokens sharing characters) can merge several.
                if (
                    aggregation == "best"
                    and depth < most
                    and len(found) == depth
                    and len({(a, b) for a, b, _ in found}) < top_k
                ):
                    deeper.append(f)
            rows, depth = deeper, min(2 * depth, most)
        return spans, null_scores


def _char_span(
    enc: Any, offsets: Sequence[Sequence[int]], i: int, j: int, sequence_index: int, align: bool
) -> tuple[int, int]:
    """Characters of the context for tokens ``i..j`` of one feature: the pipeline's ``get_indices``."""
    if align:
        try:
            first_word, last_word = enc.token_to_word(i), enc.token_to_word(j)
            return enc.word_to_chars(first_word, sequence_index)[0], enc.word_to_chars(last_word, sequence_index)[1]
        except Exception:  # no word (a special token, a tokenizer without words): the offsets
            pass
    return offsets[i][0], offsets[j][1]


def merge_features(
    contexts: Sequence[str],
    sample_of_feature: Sequence[int],  # (F,) example index of each feature
    spans: Sequence[Sequence[CharSpan]],  # (F, *) each feature's candidates, best first
    null_scores: Sequence[float],  # (F,)
    *,
    top_k: int,
    handle_impossible_answer: bool = False,
    null_threshold: float = 0.0,
    aggregation: str = "best",
) -> list[list[Answer]]:
    """Per example, its features' candidates merged (``aggregation``, see :class:`QuestionAnswerer`),
    the top ``top_k``, and the null answer (the smallest null score of the example's features)
    when asked, ranked by ``null - null_threshold`` after the spans of at least that score."""
    _check_aggregation(aggregation)
    null = [float("inf")] * len(contexts)
    ranked: list[list[Answer]] = []
    if aggregation == "best":
        best: list[dict[tuple[int, int], float]] = [{} for _ in contexts]
        for f, example in enumerate(sample_of_feature):
            null[example] = min(null[example], null_scores[f])
            for a, b, score in spans[f]:
                if score > best[example].get((a, b), float("-inf")):
                    best[example][(a, b)] = score
        for example, context in enumerate(contexts):
            by_score = sorted(best[example].items(), key=lambda item: (-item[1], item[0]))
            ranked.append([Answer(context[s:e], score, s, e) for (s, e), score in by_score[:top_k]])
    else:
        listed: list[dict[str, list[Any]]] = [{} for _ in contexts]  # lower-cased text -> [text, score, start, end]
        for f, example in enumerate(sample_of_feature):
            null[example] = min(null[example], null_scores[f])
            context = contexts[example]
            for a, b, score in spans[f]:
                text = context[a:b]
                entry = listed[example].get(text.lower())
                if entry is not None:
                    entry[1] += score
                else:
                    listed[example][text.lower()] = [text, score, a, b]
        for example in range(len(contexts)):
            # dicts keep insertion order and sorted() is stable: ties stay in the order first found
            by_sum = sorted(listed[example].values(), key=lambda entry: -entry[1])
            ranked.append([Answer(text, score, a, b) for text, score, a, b in by_sum[:top_k]])
    for example, row in enumerate(ranked):
        if handle_impossible_answer and null[example] != float("inf"):
            rank = sum(a.score >= null[example] - null_threshold for a in row)
            row.insert(rank, Answer("", null[example], 0, 0))
            del row[top_k:]
    return ranked


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"QuestionAnswerer: {name} must be a bool; got {value!r} ({type(value).__name__})")
    return value


def _check_aggregation(aggregation: Any) -> str:
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise ValueError(f"QuestionAnswerer: aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")
    return aggregation
