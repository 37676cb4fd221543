"""Which implementation runs each op: the registry, in one place.

:data:`TABLE` lists every implementation: the op, the backend, the devices it has kernels for and
where it lives. :data:`AUTO` is ``auto``'s order of preference per device and :data:`SUBSTITUTES`
what runs when an explicitly chosen backend has no kernel for the op on a device; both are data.
:func:`unavailable` is the only place that says whether (and why not) an implementation can run
here; :func:`resolve` picks one and :func:`implementation` returns it. The public functions, the
registered ops, ``qa-kernels bench`` and ``doctor`` and the test suite all ask these.

Order of precedence of the requested backend: :func:`use_backend` (this thread / context only),
then :func:`set_backend` (the whole process), then the ``QA_KERNELS_BACKEND`` environment variable
(read at each call), then ``auto``.

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

Adding a backend: a module per op with the op's functions (the torch implementation's signatures),
one :data:`TABLE` row per op, its availability in :func:`unavailable`, its place in :data:`AUTO`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Optional

from ._env import _check_interpreter_versions, triton_available, triton_interpreter_on

BACKENDS = ("auto", "triton", "native", "torch")
ENV_VAR = "QA_KERNELS_BACKEND"
OPS = ("qa_head", "decode_spans")
ANY_DEVICE = "*"


@dataclass(frozen=True)
class Implementation:
    op: str
    backend: str
    devices: tuple[str, ...]  # the devices it has kernels for (ANY_DEVICE: every device torch has)
    target: str  # "module" (qa_head: a module with qa_head_fwd / qa_head_bwd) or "module:function"


TABLE = (
    Implementation("qa_head", "triton", ("cuda", "cpu"), "qa_kernels.triton.qa_head"),  # cpu: the interpreter
    Implementation("qa_head", "native", ("cpu", "cuda"), "qa_kernels.native"),  # cuda: a CUDA build only
    Implementation("qa_head", "torch", (ANY_DEVICE,), "qa_kernels.torch_impl"),
    Implementation("decode_spans", "triton", ("cuda", "cpu"), "qa_kernels.triton.spans:decode_spans"),
    Implementation("decode_spans", "native", ("cpu",), "qa_kernels.native:decode_spans"),
    Implementation("decode_spans", "torch", (ANY_DEVICE,), "qa_kernels.spans:decode_spans_torch"),
)
_BY_KEY = {(i.op, i.backend): i for i in TABLE}
# auto's preference per device, the first that can run wins (other devices: torch).
AUTO = {"cuda": ("triton", "torch"), "cpu": ("native", "torch")}
# A backend chosen explicitly for an op it has no kernel for on the device: these run instead, the
# first that can (decode_spans has no CUDA C++ kernel: Triton's decodes, else torch's).
SUBSTITUTES = {("decode_spans", "native"): ("triton", "torch")}
# The native extension's ops, by the op they implement (the head's forward stands for its pair).
NATIVE_OPS = {"qa_head": "qa_head_fwd", "decode_spans": "decode_spans"}

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


def _serves(entry: Implementation, device_type: str) -> bool:
    return ANY_DEVICE in entry.devices or device_type in entry.devices


def unavailable(op: str, backend: str, device_type: str) -> Optional[str]:
    """Why implementation ``backend`` of ``op`` cannot run on ``device_type`` here; None when it can.
    Asking never warns (the native extension may load, or compile, on the first question)."""
    entry = _BY_KEY[(op, backend)]
    if not _serves(entry, device_type):
        return f"the {backend} implementation of {op} has no {device_type} kernel"
    if backend == "triton":
        if not triton_available():
            return "triton is not installed"
        if device_type == "cpu" and not triton_interpreter_on():
            return (
                "the Triton kernels run on CPU tensors only through Triton's interpreter: set "
                "TRITON_INTERPRET=1 in the environment before qa_kernels is imported (slow; for tests)"
            )
        if device_type == "cpu":
            try:
                _check_interpreter_versions()
            except RuntimeError as e:
                return str(e)
    if backend == "native":
        native = _native()
        if not native.available():
            return native.unavailable_reason()
        if not native.has_kernel(NATIVE_OPS[op], device_type):
            return (
                f"this build of the native extension has no {device_type} kernels for {op} (CUDA kernels "
                "are built only with a CUDA-enabled torch and a CUDA toolkit)"
            )
    return None


@functools.cache
def _warn_native_fallback() -> None:
    """Once per process: ``auto`` wanted the native CPU kernels and could not have them."""
    warnings.warn(
        f"qa_kernels: {_native().unavailable_reason()}. The backend 'auto' runs the CPU ops with the "
        f"(slower) torch implementation instead; {ENV_VAR}=native would raise this error.",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve(op: str, device_type: str) -> str:
    """The concrete backend (``triton``, ``native`` or ``torch``) that runs ``op`` on tensors on
    ``device_type``, from the requested one; raises a RuntimeError naming the reason when a backend
    asked for explicitly cannot run."""
    name = get_backend()
    if name == "auto":
        for candidate in AUTO.get(device_type, ("torch",)):
            reason = unavailable(op, candidate, device_type)
            if reason is None:
                return candidate
            if candidate == "native" and not native_available():
                _warn_native_fallback()
        return "torch"
    reason = unavailable(op, name, device_type)
    if reason is None:
        return name
    if not _serves(_BY_KEY[(op, name)], device_type):
        for substitute in SUBSTITUTES.get((op, name), ()):
            if unavailable(op, substitute, device_type) is None:
                return substitute
    raise RuntimeError(f"QA backend {name!r} was requested for {op} on {device_type} tensors, but {reason}")


@functools.cache
def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def implementation(op: str, device_type: str) -> Any:
    """What runs ``op`` on ``device_type`` now: for ``qa_head`` a module with ``qa_head_fwd`` and
    ``qa_head_bwd``, for ``decode_spans`` the decoding function (signatures as the torch ones)."""
    return _load(_BY_KEY[(op, resolve(op, device_type))].target)
