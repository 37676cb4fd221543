"""Which implementation runs the ops: chosen here, in one place.

Order of precedence: :func:`use_backend` (this thread / context only), then :func:`set_backend`
(the whole process), then the ``QA_KERNELS_BACKEND`` environment variable (read at each call), then
``auto``.

``use_backend`` is a context variable: two threads (or asyncio tasks) inside their own
``use_backend`` blocks each run their own backend, a new thread starts without any block (the
process-wide choice), and leaving a block restores exactly what was in force before it. In eager
mode a backward pass runs with the backend that was requested when its forward ran, whichever
thread runs it.

Under ``torch.compile`` each op picks its implementation when the compiled code runs it: enter the
block around the call to the compiled function (and around its ``backward()``, if that runs outside
it). A ``use_backend`` block inside a function compiled with ``fullgraph=True`` does not trace
(dynamo cannot trace a ContextVar); without fullgraph it costs a graph break.

``auto``: Triton on CUDA; on CPU the native C++ extension when it is built, else the torch
implementation. ``triton`` on CPU tensors runs the kernels through Triton's interpreter, which must be
enabled (``TRITON_INTERPRET=1``) before qa_kernels is imported: that is how the tests exercise the
kernels on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Optional

from ._env import _check_interpreter_versions, triton_available, triton_interpreter_on

BACKENDS = ("auto", "triton", "native", "torch")
ENV_VAR = "QA_KERNELS_BACKEND"

_process_choice: Optional[str] = None  # set_backend()
_context_choice: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("qa_kernels_backend", default=None)


def _check_name(name: object, what: str = "backend") -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}; got {name!r}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Choose the backend for the whole process, every thread (``None``: back to the environment
    variable / ``auto``). A :func:`use_backend` block still takes precedence inside it."""
    global _process_choice
    _process_choice = None if name is None else _check_name(name)


def get_backend() -> str:
    """The requested backend name in this thread / context (``auto`` unless chosen by
    :func:`use_backend`, :func:`set_backend` or ``QA_KERNELS_BACKEND``)."""
    name = _context_choice.get()
    if name is not None:
        return name
    if _process_choice is not None:
        return _process_choice
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return _check_name(value, f"the environment variable {ENV_VAR}")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the ops with backend ``name`` inside the block, in this thread (or
    asyncio task) only; other threads keep theirs. Blocks nest; leaving one restores the previous
    choice."""
    token = _context_choice.set(_check_name(name))
    try:
        yield
    finally:
        _context_choice.reset(token)


def _native() -> ModuleType:
    from . import native  # imported late: loading it may build the extension

    return native


def native_available() -> bool:
    """The C++ extension is loaded (built ahead of time, or just in time on first use)."""
    return _native().available()


@functools.cache
def _warn_native_fallback() -> None:
    """Once per process: ``auto`` wanted the native CPU kernels and could not have them."""
    warnings.warn(
        f"qa_kernels: {_native().unavailable_reason()}. The backend 'auto' runs the CPU ops with the "
        f"(slower) torch implementation instead; {ENV_VAR}=native would raise this error.",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve(device_type: str) -> str:
    """The concrete backend (``triton``, ``native`` or ``torch``) for tensors on ``device_type``."""
    name = get_backend()
    if name == "auto":
        if device_type == "cuda" and triton_available():
            return "triton"
        if device_type == "cpu":
            if _native().has_device_kernels("cpu"):
                return "native"
            _warn_native_fallback()
        return "torch"
    if name == "triton":
        if not triton_available():
            raise RuntimeError("QA backend 'triton' was requested but triton is not installed")
        if device_type == "cpu" and not triton_interpreter_on():
            raise RuntimeError(
                "QA backend 'triton' on CPU tensors needs Triton's interpreter: set "
                "TRITON_INTERPRET=1 in the environment before qa_kernels is imported"
            )
        if device_type == "cpu":
            _check_interpreter_versions()
    if name == "native" and not _native().has_device_kernels(device_type):
        if not native_available():
            raise RuntimeError(f"QA backend 'native' was requested but {_native().unavailable_reason()}")
        raise RuntimeError(
            f"QA backend 'native' was requested for {device_type} tensors, but this build of the extension "
            f"has no {device_type} kernels (CUDA kernels are built only with a CUDA torch and toolkit)"
        )
    return name


def implementation(device_type: str) -> ModuleType:
    """The module implementing ``qa_head_fwd`` / ``qa_head_bwd`` for ``device_type``."""
    name = resolve(device_type)
    if name == "triton":
        from .triton import qa_head as triton_impl

        return triton_impl
    if name == "native":
        from . import native

        return native
    from . import torch_impl

    return torch_impl
