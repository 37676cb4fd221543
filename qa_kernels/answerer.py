"""Batched extractive question answering with a transformers model: what transformers' removed
``question-answering`` pipeline did, with the span decoding on the model's device.

Per call: tokenize every (question, context) pair with truncation and a stride, so a long context
overflows into several features; run the model over the features in batches; decode every
feature at once with :func:`qa_kernels.decode_spans` where the logits are (one small host copy of
the top-k, never the logits); map each span's tokens back to characters of the context through the
offset mapping; merge the features of each example (best score per character span, the smallest
null score, as transformers' pipeline and the SQuAD examples do).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from ._checks import check_int
from .ops.decode_spans import decode_spans
from .ops.decode_spans.keys import SCORES

if TYPE_CHECKING:
    from transformers import BatchEncoding


@dataclass(frozen=True)
class Answer:
    """One answer: ``context[start:end] == text``; the null answer is ``("", null score, 0, 0)``."""

    text: str
    score: float
    start: int  # first character in the context
    end: int  # one past the last character


class QuestionAnswerer:
    """Answers batches of (question, context) pairs with an extractive QA model.

    The caller's model object itself is changed, in place, by the constructor: it is switched to
    eval mode (``model.eval()``, as the pipeline did), and with ``fused_head=True`` (the default) a
    supported model is patched with :func:`qa_kernels.patch`, so it keeps running the fused head
    after the answerer is gone, in training too. No copy is made. To get the model back as it was,
    call ``qa_kernels.unpatch(model)`` and ``model.train()`` if it was training; to leave it
    untouched, pass ``copy.deepcopy(model)`` (or ``fused_head=False``, which still sets eval mode).

    Args:
        model: a transformers ``*ForQuestionAnswering`` model (any module whose output has
            ``start_logits`` and ``end_logits``, or is a tuple starting with them). Put in eval mode
            and, with ``fused_head=True``, patched in place (see above).
        tokenizer: its fast tokenizer (the offset mapping needs one).
        max_length: tokens per feature (question, context part and special tokens): an int >= 1.
        stride: tokens of context shared by consecutive features of one long context: an int in
            ``[0, max_length)``.
        max_answer_len: the longest answer, in tokens: an int >= 1.
        score: ``"prob"`` (transformers' pipeline: start x end probabilities) or ``"logit"`` (the
            SQuAD examples: start + end logits).
        batch_size: features per forward pass: an int >= 1.
        fused_head: patch the model with the fused QA head when it is supported; an unsupported
            model runs unfused, with a warning.

    Raises:
        TypeError: a tokenizer that is not fast; an integer argument that is not an int (a bool, a
            float such as ``3.5``, a string such as ``"384"``).
        ValueError: an integer argument out of its range; an unknown ``score``.
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
        if not isinstance(fused_head, bool):
            got = f"{fused_head!r} ({type(fused_head).__name__})"
            raise TypeError(f"QuestionAnswerer: fused_head must be a bool; got {got}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.max_answer_len = max_answer_len
        self.score = score
        self.batch_size = batch_size
        # A question-first tokenizer pads on the right (transformers' pipeline rule).
        self.question_first = tokenizer.padding_side == "right"
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

    def tokenize(self, questions: Sequence[str], contexts: Sequence[str]) -> BatchEncoding:
        """The features: a ``BatchEncoding`` with ``overflow_to_sample_mapping`` and ``offset_mapping``."""
        questions = [q.lstrip() for q in questions]  # leading spaces make some tokenizers truncate badly
        first, second = (questions, contexts) if self.question_first else (contexts, questions)
        return self.tokenizer(
            first, second,
            truncation="only_second" if self.question_first else "only_first",
            max_length=self.max_length, stride=self.stride, padding="longest",
            return_overflowing_tokens=True, return_offsets_mapping=True, return_tensors="pt",
        )  # fmt: skip

    def context_mask(self, encoding: BatchEncoding) -> torch.Tensor:
        """``(F, S)`` bool: the tokens of each feature that belong to the context."""
        context_id = 1 if self.question_first else 0
        num_features = encoding["input_ids"].shape[0]
        rows = [[sid == context_id for sid in encoding.sequence_ids(f)] for f in range(num_features)]
        return torch.from_numpy(np.array(rows, dtype=np.bool_))

    @torch.inference_mode()
    def logits(self, encoding: BatchEncoding) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F, S)`` start and end logits of every feature, on the model's device."""
        device = self.device
        inputs = {k: encoding[k] for k in self.tokenizer.model_input_names if k in encoding}
        num_features = encoding["input_ids"].shape[0]
        starts, ends = [], []
        for lo in range(0, num_features, self.batch_size):
            out = self.model(**{k: v[lo : lo + self.batch_size].to(device) for k, v in inputs.items()})
            start, end = (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else (out[0], out[1])
            starts.append(start)
            ends.append(end)
        return torch.cat(starts), torch.cat(ends)

    def __call__(
        self,
        questions: Union[str, Sequence[str]],
        contexts: Union[str, Sequence[str]],
        *,
        top_k: int = 1,
        handle_impossible_answer: bool = False,
        null_threshold: float = 0.0,
    ) -> list[list[Answer]]:
        """The ``top_k`` best answers of each pair, best first (a shorter list when the context has
        fewer spans).

        With ``handle_impossible_answer`` the null answer ``Answer("", null_score, 0, 0)`` takes part:
        it ranks first when ``null_score > best_span_score + null_threshold`` (SQuAD v2 style; the
        threshold is tuned on a dev set, 0.0 is the pipeline's rule), and among the spans by
        ``null_score - null_threshold`` otherwise.
        """
        if isinstance(questions, str):
            questions = [questions]
        if isinstance(contexts, str):
            contexts = [contexts]
        if len(questions) != len(contexts):
            raise ValueError(f"questions and contexts must pair up; got {len(questions)} and {len(contexts)}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1; got {top_k!r}")
        if not questions:
            return []
        encoding = self.tokenize(questions, contexts)
        start_logits, end_logits = self.logits(encoding)
        S = start_logits.shape[1]  # a row holds at most S * min(max_answer_len, S) spans
        spans = decode_spans(
            start_logits, end_logits, context_mask=self.context_mask(encoding).to(start_logits.device),
            max_answer_len=self.max_answer_len, top_k=min(top_k, S * min(self.max_answer_len, S)), score=self.score,
        )  # fmt: skip
        return merge_features(
            contexts,
            encoding["overflow_to_sample_mapping"].tolist(),
            encoding["offset_mapping"].tolist(),
            spans.starts.tolist(), spans.ends.tolist(), spans.scores.tolist(), spans.null_scores.tolist(),
            top_k=top_k, handle_impossible_answer=handle_impossible_answer, null_threshold=null_threshold,
        )  # fmt: skip


def merge_features(
    contexts: Sequence[str],
    sample_of_feature: Sequence[int],  # (F,) example index of each feature
    offsets: Sequence[Sequence[Sequence[int]]],  # (F, S, 2) character [start, end) of each token
    starts: Sequence[Sequence[int]],  # (F, K) token spans from decode_spans, -1 past the candidates
    ends: Sequence[Sequence[int]],  # (F, K)
    scores: Sequence[Sequence[float]],  # (F, K)
    null_scores: Sequence[float],  # (F,)
    *,
    top_k: int,
    handle_impossible_answer: bool = False,
    null_threshold: float = 0.0,
) -> list[list[Answer]]:
    """Per example: the best score of each character span over its features (overlapping features
    find the same span twice), the top ``top_k``, and the null answer (the smallest null score of
    the example's features) when asked. Exact: each feature's own top-k holds every span that can
    enter the example's top-k."""
    best: list[dict[tuple[int, int], float]] = [{} for _ in contexts]
    null = [float("inf")] * len(contexts)
    for f, example in enumerate(sample_of_feature):
        null[example] = min(null[example], null_scores[f])
        for i, j, score in zip(starts[f], ends[f], scores[f], strict=True):
            if i < 0:
                break
            span = (offsets[f][i][0], offsets[f][j][1])
            if score > best[example].get(span, float("-inf")):
                best[example][span] = score
    answers = []
    for example, context in enumerate(contexts):
        ranked = sorted(best[example].items(), key=lambda item: (-item[1], item[0]))
        row = [Answer(context[s:e], score, s, e) for (s, e), score in ranked[:top_k]]
        if handle_impossible_answer and null[example] != float("inf"):
            rank = sum(a.score >= null[example] - null_threshold for a in row)
            row.insert(rank, Answer("", null[example], 0, 0))
            row = row[:top_k]
        answers.append(row)
    return answers
