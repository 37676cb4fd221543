"""Which implementation runs each op: the registry, in one place.

:data:`TABLE` lists every implementation: the op, the backend and the devices it has kernels for;
it lives in ``qa_kernels/ops/<op>/<backend>_impl.py``, a module with the functions of the op's
registered ops (``qa_head_fwd`` / ``qa_head_bwd``; ``decode_spans``), the signatures of the torch
implementation's. :data:`AUTO` is ``auto``'s order of preference per device and
:data:`SUBSTITUTES` what runs when an explicitly chosen backend has no kernel for the op on a
device; both are data. :func:`unavailable` is the only place that says whether (and why not) an
implementation can run here; :func:`resolve` picks one, :func:`implementation` returns it, and
:func:`route` decides whether a call may skip the registered op's dispatch. The public functions,
the registered ops, ``qa-kernels bench`` and ``doctor`` and the test suite all ask these.

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

Adding a backend: ``qa_kernels/ops/<op>/<backend>_impl.py`` for each op it implements, one
:data:`TABLE` row per op, its name in :data:`BACKENDS` and, where it may be missing here, its check
in :data:`_CHECKS` (and its place in :data:`AUTO` if ``auto`` should pick it).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

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

    @property
    def module(self) -> str:
        """Where it lives: a module with the functions of the op's registered ops."""
        return f"qa_kernels.ops.{self.op}.{self.backend}_impl"


TABLE = (
    Implementation("qa_head", "triton", ("cuda", "cpu")),  # cpu: the interpreter
    Implementation("qa_head", "native", ("cpu", "cuda")),  # cuda: a CUDA build only
    Implementation("qa_head", "torch", (ANY_DEVICE,)),
    Implementation("decode_spans", "triton", ("cuda", "cpu")),
    Implementation("decode_spans", "native", ("cpu",)),
    Implementation("decode_spans", "torch", (ANY_DEVICE,)),
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


def _triton_unavailable(op: str, device_type: str) -> Optional[str]:
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
    return None


def _native_unavailable(op: str, device_type: str) -> Optional[str]:
    native = _native()
    if not native.available():
        return native.unavailable_reason()
    if not native.has_kernel(NATIVE_OPS[op], device_type):
        return (
            f"this build of the native extension has no {device_type} kernels for {op} (CUDA kernels "
            "are built only with a CUDA-enabled torch and a CUDA toolkit)"
        )
    return None


# Per backend that may be missing here: why it cannot run ``op`` on ``device_type``, or None.
_CHECKS: dict[str, Callable[[str, str], Optional[str]]] = {
    "triton": _triton_unavailable,
    "native": _native_unavailable,
}


def unavailable(op: str, backend: str, device_type: str) -> Optional[str]:
    """Why implementation ``backend`` of ``op`` cannot run on ``device_type`` here; None when it can.
    Asking never warns (the native extension may load, or compile, on the first question)."""
    entry = _BY_KEY[(op, backend)]
    if not _serves(entry, device_type):
        return f"the {backend} implementation of {op} has no {device_type} kernel"
    check = _CHECKS.get(backend)
    return None if check is None else check(op, device_type)


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
def _load(module: str) -> ModuleType:
    return importlib.import_module(module)


def implementation(op: str, device_type: str) -> ModuleType:
    """The module that runs ``op`` on ``device_type`` now: for ``qa_head`` one with ``qa_head_fwd``
    and ``qa_head_bwd``, for ``decode_spans`` one with ``decode_spans`` (the torch ones' signatures)."""
    return _load(_BY_KEY[(op, resolve(op, device_type))].module)


# ----------------------------------------------------------------------------------------------
# The no-dispatch fast path
# ----------------------------------------------------------------------------------------------

# Devices whose tensors the implementations take directly; any other (meta, and the devices of
# tensor subclasses) goes through the registered op, whose fake kernel serves meta tensors.
_KERNEL_DEVICES = ("cpu", "cuda")
# Tensor types that are plain data to the kernels (nn.Parameter: a patched model's weight and bias).
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def route(
    op: str,
    device_type: str,
    names: tuple[str, ...],
    tensors: tuple[Optional[Tensor], ...],
    *,
    differentiable: bool,
) -> str:
    """How a call of ``op`` on ``tensors`` (the arguments ``names``; None where absent) runs:

    * ``"op"``: the registered op (autograd, torch.compile, tensor subclasses, fake and meta
      tensors, dispatch and function modes all see it);
    * ``"plain"``: :func:`implementation` called directly: nothing to differentiate and nobody
      watching (serving, evaluation). The op's Python dispatch costs more than the kernel at serving
      sizes (measured on CPU, the head at (1, 384, 768) fp32: 16 us of 59). Same function, same
      numbers;
    * ``"autograd"`` (``differentiable`` ops only): something to differentiate, plain tensors, nobody
      watching: the op's own autograd (the same setup_context and backward) around
      :func:`implementation` called directly, as a ``torch.autograd.Function``, without the custom
      op's dispatch (its autograd wrapper binds and checks every argument in Python). Measured on
      CPU (2 threads, fp32, forward + backward of the loss): 0.50 -> 0.39 ms at (1, 384, 768),
      6.02 -> 5.79 ms at (32, 384, 1024). Same functions, same numbers;
    * ``"transform"`` (``differentiable`` ops only): the torch implementation's operators called
      directly, so that autograd's forward mode and torch.func's transforms differentiate and batch
      them like any PyTorch code (the ops have no forward-mode or vmap rule, and a kernel called on
      a dual or wrapped tensor would drop its tangent or its batch dimension). A non-differentiable
      op takes the registered op there.

    One loop over the inputs: this runs on every call."""
    if torch.compiler.is_compiling():
        return "op"
    forward_ad = differentiable and fwAD._current_level >= 0  # inside a forward_ad.dual_level()
    grad = differentiable and torch.is_grad_enabled()
    result = "plain" if device_type in _KERNEL_DEVICES else "op"
    for name, t in zip(names, tensors, strict=True):
        if t is None:
            continue
        if torch._C._functorch.is_functorch_wrapped_tensor(t):  # inside torch.func.grad / vmap / ...
            return "transform" if differentiable else "op"
        if forward_ad and fwAD.unpack_dual(t).tangent is not None:
            return "transform"
        if type(t) not in _PLAIN_TYPES:
            if type(t).__name__ == "DTensor":  # would reach the op, which has no sharding rule
                raise TypeError(
                    f"{name} is a DTensor: {op} has no sharding rule for it; call {op} on local tensors "
                    "(DTensor.to_local() / DTensor.full_tensor())"
                )
            result = "op"
        elif grad and t.requires_grad and result == "plain":
            result = "autograd"
    if result != "op" and (_get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()):
        return "op"
    return result
