"""Integrations of the fused QA head with other libraries (Hugging Face transformers: :mod:`.hf`)."""

from .hf import (
    UnsupportedModelError,
    is_patched,
    patch,
    patch_transformers,
    supported_models,
    unpatch,
    unpatch_transformers,
)

__all__ = [
    "UnsupportedModelError",
    "is_patched",
    "patch",
    "patch_transformers",
    "supported_models",
    "unpatch",
    "unpatch_transformers",
]
