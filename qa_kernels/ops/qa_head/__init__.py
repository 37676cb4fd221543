"""The fused QA head: ``Linear(H, 2)``, the start/end split and the clamped cross-entropy."""

from .api import qa_head

__all__ = ["qa_head"]
