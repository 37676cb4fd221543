"""The span decoder's constants and its ranking key, shared by every implementation (the Triton
kernel writes the same key again in Triton).

  key(i, j) = (ord(score) << 32) - 1 - (i * 2**16 + j)

where ord maps float32 bits to int32 preserving order (negative floats have their 31 low bits
flipped; -0.0 and NaN are first made +0.0 and the canonical NaN). A larger key is a better span;
the (i, j) code takes 32 bits, hence S <= 65535; no span ever gets _NO_KEY.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_SEQUENCE_LENGTH = 65535  # i and j are packed into 16 bits each in the ranking key
# Ranks beyond a row's spans are padding (-1, -1, -inf): allowed up to this many, so that the output's
# width need not depend on S; beyond both, top_k is refused rather than allocated.
MAX_TOP_K = 65535
SCORES = ("prob", "logit")
MASKED_LOGIT = -10000.0  # transformers' value for tokens outside the context
_NO_KEY = -9_200_000_000_000_000_000  # below every span's key (the lowest is about -9.1873e18)


def span_keys(scores: Tensor, codes: Tensor) -> Tensor:
    """int64 keys, larger = better: ``(ord(score) << 32) - 1 - code``, code = i * 2**16 + j.

    ``scores`` float32 and ``codes`` int64 of the same (broadcastable) shape.
    """
    scores = torch.where(scores == 0, 0.0, scores)  # -0.0 -> +0.0
    scores = torch.where(scores.isnan(), float("nan"), scores)  # one NaN
    bits = scores.contiguous().view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip magnitude bits
    return (bits.to(torch.int64) << 32) - 1 - codes


def unpack_keys(keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(starts, ends, scores)`` from keys; ``_NO_KEY`` gives ``(-1, -1, -inf)``."""
    hi = (keys >> 32) + 1
    codes = (hi << 32) - 1 - keys
    bits = hi.to(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    scores = bits.view(torch.float32)
    found = keys != _NO_KEY
    starts = torch.where(found, codes >> 16, -1)
    ends = torch.where(found, codes & 0xFFFF, -1)
    return starts, ends, torch.where(found, scores, float("-inf"))
