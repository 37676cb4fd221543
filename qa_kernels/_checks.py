"""Argument checks shared by the public API (qa_head, decode_spans, QuestionAnswerer): each refusal
names the argument, what it got and what is accepted. A leaf module: torch and the standard library
only."""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch
from torch import Tensor


def describe(t: Tensor) -> str:
    """``shape (..), dtype .., device ..``: what an error message says about a tensor."""
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t: object) -> Tensor:
    """``t`` itself when it is a dense (strided) tensor; TypeError otherwise (sparse, nested and
    other layouts reach no kernel)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor; got layout {t.layout}, {describe(t)}")
    return t


def check_int(
    name: str, value: Any, *, low: int, high: Optional[int] = None, high_name: str = "", where: str = ""
) -> int:
    """``value`` as an int in ``[low, high)`` (no upper bound without ``high``), or an error naming
    the argument (prefixed by ``where``, e.g. ``"QuestionAnswerer: "``), what it got and what is
    expected. Integral types (numpy's too) are accepted; bools, floats (even whole ones) and strings
    are not."""
    expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high_name or high})"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}{name} must be {expected}; got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < low or (high is not None and value >= high):
        raise ValueError(f"{where}{name} must be {expected}; got {value}")
    return value
