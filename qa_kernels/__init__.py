"""qa_kernels: the extractive question-answering head of Hugging Face models as one fused op.

The public names load on first use: importing the package alone does not import torch, so that
``qa-kernels --help`` answers at once. The first public name used registers both ops with torch
(``torch.ops.qa_kernels.qa_head_fwd`` / ``qa_head_bwd`` / ``decode_spans``); so does importing
``qa_kernels.ops.qa_head`` (the head's) and ``qa_kernels.ops.decode_spans`` (decode_spans').

Layout: ``qa_kernels/ops/<op>/`` defines each op (its public function, registered op and
implementations); ``qa_kernels.backend`` is the registry that picks an implementation per call;
``qa_kernels.functional``, ``qa_kernels.spans`` and ``qa_kernels.reference`` are the public
modules that name them.
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
    "qa_head": "ops.qa_head",
    "UnsupportedModelError": "integrations",
    "patch": "integrations",
    "patch_transformers": "integrations",
    "unpatch": "integrations",
    "unpatch_transformers": "integrations",
    "QAHead": "module",
    "QAHeadOutput": "outputs",
    "SpanOutput": "ops.decode_spans",
    "decode_spans": "ops.decode_spans",
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
    from .integrations import UnsupportedModelError, patch, patch_transformers, unpatch, unpatch_transformers
    from .module import QAHead
    from .ops.decode_spans import SpanOutput, decode_spans
    from .ops.qa_head import qa_head
    from .outputs import QAHeadOutput


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for registers_ops in ("ops.qa_head", "ops.decode_spans"):  # whichever name comes first, both ops exist after it
        importlib.import_module(f".{registers_ops}", __name__)
    globals()[name] = value  # from now on a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
