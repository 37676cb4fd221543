"""The C++/CUDA extension (csrc/). Not built yet: the csrc issue brings it."""

from __future__ import annotations


def available() -> bool:
    return False


def unavailable_reason() -> str:
    return "the native extension is not part of this build yet"
