"""The eager PyTorch reference that every implementation is tested against (defined in
``qa_kernels/ops/qa_head/reference.py``)."""

from .ops.qa_head.reference import NumItems, qa_head

__all__ = ["NumItems", "qa_head"]
