"""qa_kernels: the extractive question-answering head of Hugging Face models as one fused op."""

from . import reference
from .backend import get_backend, set_backend, use_backend
from .functional import qa_head
from .module import QAHead
from .outputs import QAHeadOutput

__version__ = "0.1.0"

__all__ = [
    "QAHead",
    "QAHeadOutput",
    "get_backend",
    "qa_head",
    "reference",
    "set_backend",
    "use_backend",
]
