"""Which implementation runs the ops: chosen here, in one place.

Order of precedence: :func:`use_backend` / :func:`set_backend` (this process), then the
``QA_KERNELS_BACKEND`` environment variable (read at each call), then ``auto``.

``auto``: Triton on CUDA; on CPU the native C++ extension when it is built, else the torch
implementation. ``triton`` on CPU tensors runs the kernels through Triton's interpreter, which must be
enabled (``TRITON_INTERPRET=1``) before qa_kernels is imported: that is how the tests exercise the
kernels on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Optional

BACKENDS = ("auto", "triton", "native", "torch")
ENV_VAR = "QA_KERNELS_BACKEND"

_override: Optional[str] = None


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Force a backend for this process (``None`` goes back to the environment / ``auto``)."""
    global _override
    _override = None if name is None else _check_name(name)


def get_backend() -> str:
    """The requested backend name (``auto`` unless forced by the API or the environment)."""
    if _override is not None:
        return _override
    return _check_name(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the ops with backend ``name`` inside the block."""
    global _override
    previous, _override = _override, _check_name(name)
    try:
        yield
    finally:
        _override = previous


@functools.cache
def triton_available() -> bool:
    """Triton imports (whether it can run CPU tensors is :func:`triton_interpreter_on`)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


@functools.cache
def _check_interpreter_versions() -> None:
    """Triton 3.6's interpreter converts loop bounds with int() on 1-element arrays, which
    numpy >= 2.4 rejects (seen here; fixed by Triton 3.7). Compiled Triton 3.6 is unaffected."""
    import numpy
    import triton

    if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
        raise RuntimeError(
            f"Triton {triton.__version__}'s interpreter fails on the kernels' loops with numpy "
            f"{numpy.__version__}: install numpy<2.4 or triton>=3.7 to run the Triton kernels on CPU"
        )


def _native() -> ModuleType:
    from . import native  # imported late: loading it may build the extension

    return native


def native_available() -> bool:
    """The C++ extension is loaded (built ahead of time, or just in time on first use)."""
    return _native().available()


def resolve(device_type: str) -> str:
    """The concrete backend (``triton``, ``native`` or ``torch``) for tensors on ``device_type``."""
    name = get_backend()
    if name == "auto":
        if device_type == "cuda" and triton_available():
            return "triton"
        if device_type == "cpu" and _native().has_device_kernels("cpu"):
            return "native"
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
        from .triton import qa_head as impl
    elif name == "native":
        from . import native as impl
    else:
        from . import torch_impl as impl
    return impl
