"""The span-decoding suite: transformers' per-feature decoding against qa_kernels.decode_spans.

transformers (5.x) decodes one feature at a time in numpy (``select_starts_ends`` -> ``decode_spans``
in ``pipelines/document_question_answering.py``): softmax, the dense S x S outer product, triu/tril,
a partial sort. It needs the logits on the host first, so its provider includes that copy (a sync on
CUDA). qa_kernels decodes the whole batch in one call, where the logits are.

Shape ``(F, S)``: F features of S tokens laid out as a tokenizer does (CLS, a question, SEP, the
context, SEP; every fourth feature, the last of a long example, has a shorter context), random
logits. Fixed for every shape: the ``TOP_K`` = 20 best spans of at most ``MAX_ANSWER_LEN`` = 15
tokens, score ``"prob"`` (the one transformers computes).

Mode:
  decode        the top-k spans and the null score of every feature, from the (F, S) logits

Providers:
  transformers  the baseline (speed-ups are over it): host copy, then ``select_starts_ends`` per feature
  torch         qa_kernels.decode_spans with the vectorized PyTorch implementation
  native        ... with the C++ kernel (CPU, when the loaded extension has it)
  triton        ... with the Triton kernel (CUDA; on CPU only under the interpreter)

Error: the fraction of features whose best span (start, end) differs from transformers' (0.0 when
every feature agrees). Positions are right or wrong, so no norm-relative error; the scores are
held to the contract by tests/test_spans.py. The two semantics coincide on these features:
transformers also admits spans through the first token, but zeroes their score before ranking.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple, Optional

import numpy as np
import torch

from .. import backend as qa_backend
from ..ops.decode_spans import decode_spans
from .harness import available_providers, kernel_unavailable, rotation_sets
from .head import DTYPES

TOP_K = 20  # spans per feature
MAX_ANSWER_LEN = 15  # tokens per span (transformers' default)


class Features(NamedTuple):
    start: torch.Tensor  # (F, S) start logits
    end: torch.Tensor  # (F, S) end logits
    context: torch.Tensor  # (F, S) bool: the tokens an answer may cover


def make_features(
    num_features: int,
    seq_len: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: Optional[torch.Generator] = None,
) -> Features:
    """Random logits (std 4) over F features of S tokens: CLS, a question of 8-30 tokens (1 when
    S <= 40), SEP, the context up to the final SEP. Every fourth feature's context ends earlier, at
    random (the short last feature of a long example); every feature has at least one context
    token. Drawn on the CPU from ``generator`` (torch's global one when ``None``)."""
    start = torch.randn(num_features, seq_len, generator=generator) * 4
    end = torch.randn(num_features, seq_len, generator=generator) * 4
    context = torch.zeros(num_features, seq_len, dtype=torch.bool)
    for f in range(num_features):
        question = int(torch.randint(8, 31, (), generator=generator)) if seq_len > 40 else 1
        first = min(question + 2, seq_len - 1)  # after CLS, the question and SEP (fewer on tiny S)
        stop = seq_len - 1  # the final SEP
        if f % 4 == 0 and stop > first + 1:
            stop = int(torch.randint(first + 1, stop + 1, (), generator=generator))
        context[f, first : max(stop, first + 1)] = True
    return Features(start.to(device, dtype), end.to(device, dtype), context.to(device))


def transformers_decode(features: Features, top_k: int = TOP_K, max_answer_len: int = MAX_ANSWER_LEN) -> list:
    """transformers' way, as its pipelines call it: the logits copied to the host (float32: numpy has
    no bfloat16), then ``select_starts_ends`` per feature with the first token (CLS) kept in the
    softmax. One ``(starts, ends, scores, null_score)`` of numpy arrays per feature."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    start = features.start.cpu().float().numpy()  # the host copy (a sync on CUDA)
    end = features.end.cpu().float().numpy()
    p_mask = (~features.context).cpu().numpy().astype(np.int64)  # 1: never part of an answer
    p_mask[:, 0] = 0
    attention = np.ones((1, start.shape[1]), dtype=np.int64)
    return [
        select_starts_ends(
            start[f : f + 1], end[f : f + 1], p_mask[f : f + 1], attention,
            top_k=top_k, handle_impossible_answer=True, max_answer_len=max_answer_len,
        )
        for f in range(start.shape[0])
    ]  # fmt: skip


def best_spans(provider: str, decoded) -> list[tuple[int, ...]]:
    """Each feature's best ``(start, end)`` from what ``provider`` returned; ``(-1, -1)`` for none."""
    if provider == "transformers":
        return [(int(s[0]), int(e[0])) if len(s) else (-1, -1) for s, e, _, _ in decoded]
    return list(zip(decoded.starts[:, 0].tolist(), decoded.ends[:, 0].tolist(), strict=True))


def moved_bytes(mode: str, shape: tuple[int, ...], dtype: str) -> int:
    """The floor of ``decode``: read the two (F, S) logits and the (F, S) bool mask, write the
    (F, TOP_K) starts and ends (int64) and scores (float32) and the (F,) float32 null scores.

    fp32, F=64, S=384: 196.6 kB of logits + 24.6 kB of mask + 25.9 kB of outputs = 247.0 kB.
    """
    if mode != "decode":
        raise ValueError(f"unknown mode {mode!r}")
    F, S = shape
    return 2 * F * S * DTYPES[dtype].itemsize + F * S + F * (TOP_K * (8 + 8 + 4) + 4)


class SpansWorkload:
    """Features of one (shape, dtype), rotated so that no call finds them in the cache, and the
    providers' callables over them."""

    def __init__(
        self, shape: tuple[int, ...], dtype: str, device: str, providers: Sequence[str], cache_bytes: int
    ) -> None:
        n_sets = rotation_sets(moved_bytes("decode", shape, dtype), cache_bytes)
        num_features, seq_len = shape
        self.sets = [make_features(num_features, seq_len, device, DTYPES[dtype]) for _ in range(n_sets)]
        self._reference: Optional[list[tuple[int, ...]]] = None  # transformers' best spans on sets[0]
        self._errors: dict[str, float] = {}

    @staticmethod
    def _decode(provider: str, features: Features):
        if provider == "transformers":
            return transformers_decode(features)
        with qa_backend.use_backend(provider):
            return decode_spans(
                features.start, features.end, context_mask=features.context, max_answer_len=MAX_ANSWER_LEN, top_k=TOP_K
            )

    def case(self, provider: str, mode: str) -> tuple[Callable[[], object], list[torch.Tensor]]:
        if mode != "decode":
            raise ValueError(f"unknown mode {mode!r}")
        order = itertools.cycle(self.sets)
        return (lambda: self._decode(provider, next(order))), []

    def max_error(self, provider: str, mode: str) -> float:
        """The fraction of features whose best span differs from transformers' (module docstring)."""
        if self._reference is None:
            self._reference = best_spans("transformers", transformers_decode(self.sets[0]))
        if provider not in self._errors:
            got = best_spans(provider, self._decode(provider, self.sets[0]))
            self._errors[provider] = sum(g != r for g, r in zip(got, self._reference, strict=True)) / len(got)
        return self._errors[provider]

    def close(self) -> None:
        self.sets.clear()
        self._errors.clear()


class SpansSuite:
    name = "spans"
    dims: tuple[str, ...] = ("F", "S")  # features, tokens per feature
    modes: tuple[str, ...] = ("decode",)
    providers: tuple[str, ...] = ("transformers", "torch", "native", "triton")
    baseline = "transformers"
    dtypes: tuple[str, ...] = tuple(DTYPES)
    # 64 features at SQuAD's max_seq_length (384) and at BERT's longest (512).
    presets: ClassVar[dict[str, tuple[int, ...]]] = {"squad-384": (64, 384), "squad-512": (64, 512)}

    def unavailable(self, provider: str, device: str) -> Optional[str]:
        return kernel_unavailable(provider, device, "decode_spans")

    def default_providers(self, device: str) -> list[str]:
        return available_providers(self, device)

    def default_shapes(self, device: str) -> list[tuple[int, ...]]:
        # The same on CPU: transformers takes about 60 ms a call at 64 x 384 and 100 ms at 64 x 512 (one
        # Xeon core); the default run takes about 15 s there.
        return list(self.presets.values())

    def default_dtypes(self, device: str) -> list[str]:
        # What a QA model's head returns there: bf16 under bf16 on CUDA, fp32 on CPU.
        return ["bf16"] if device == "cuda" else ["fp32"]

    def moved_bytes(self, mode: str, shape: tuple[int, ...], dtype: str) -> int:
        return moved_bytes(mode, shape, dtype)

    def workload(self, shape, dtype, device, providers, cache_bytes) -> SpansWorkload:
        return SpansWorkload(shape, dtype, device, providers, cache_bytes)
