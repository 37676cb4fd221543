"""Span decoding: the best (start, end) answer spans of each row of QA logits."""

from .api import SpanOutput, decode_spans

__all__ = ["SpanOutput", "decode_spans"]
