"""Span decoding: :func:`decode_spans` and :class:`SpanOutput` (defined in
``qa_kernels/ops/decode_spans/``), with the limits its arguments are checked against."""

from .ops.decode_spans.api import SpanOutput, decode_spans
from .ops.decode_spans.keys import MAX_SEQUENCE_LENGTH, MAX_TOP_K, SCORES

__all__ = ["MAX_SEQUENCE_LENGTH", "MAX_TOP_K", "SCORES", "SpanOutput", "decode_spans"]
