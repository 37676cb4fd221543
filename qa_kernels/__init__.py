"""qa_kernels: the extractive question-answering head of Hugging Face models as one fused op.

The public names load on first use: importing the package alone does not import torch, so that
``qa-kernels --help`` answers at once. The first public name used registers both ops with torch
(``torch.ops.qa_kernels.qa_head_fwd`` / ``qa_head_bwd`` / ``decode_spans``); so does importing
``qa_kernels.ops`` (the head's) and ``qa_kernels.spans`` (decode_spans').
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "Answer": "answerer",
    "QuestionAnswerer": "answerer",
    "get_backend": "backend",
    "set_backend": "backend",
    "use_backend": "backend",
    "qa_head": "functional",
    "UnsupportedModelError": "integrations",
    "patch": "integrations",
    "patch_transformers": "integrations",
    "unpatch": "integrations",
    "unpatch_transformers": "integrations",
    "QAHead": "module",
    "QAHeadOutput": "outputs",
    "SpanOutput": "spans",
    "decode_spans": "spans",
}
_SUBMODULES = ("reference",)

__all__ = [  # written out for the linters and type checkers: _EXPORTS and _SUBMODULES, no more
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

if TYPE_CHECKING:
    from . import reference
    from .answerer import Answer, QuestionAnswerer
    from .backend import get_backend, set_backend, use_backend
    from .functional import qa_head
    from .integrations import UnsupportedModelError, patch, patch_transformers, unpatch, unpatch_transformers
    from .module import QAHead
    from .outputs import QAHeadOutput
    from .spans import SpanOutput, decode_spans


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for registers_ops in ("functional", "spans"):  # whichever name comes first, both ops exist after it
        importlib.import_module(f".{registers_ops}", __name__)
    globals()[name] = value  # from now on a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
