"""qa_kernels: the extractive question-answering head of Hugging Face models as one fused op."""

from . import reference
from .answerer import Answer, QuestionAnswerer
from .backend import get_backend, set_backend, use_backend
from .functional import qa_head
from .integrations import UnsupportedModelError, patch, patch_transformers, unpatch, unpatch_transformers
from .module import QAHead
from .outputs import QAHeadOutput
from .spans import SpanOutput, decode_spans

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "QAHead",
    "QAHeadOutput",
    "QuestionAnswerer",
    "SpanOutput",
    "UnsupportedModelError",
    "decode_spans",
    "get_backend",
    "patch",
    "patch_transformers",
    "qa_head",
    "reference",
    "set_backend",
    "unpatch",
    "unpatch_transformers",
    "use_backend",
]
