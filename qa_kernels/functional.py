"""The functional API: :func:`qa_head` (defined in ``qa_kernels/ops/qa_head/api.py``)."""

from .ops.qa_head.api import qa_head

__all__ = ["qa_head"]
