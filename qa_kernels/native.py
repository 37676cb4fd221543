"""The native extension (csrc/): C++ CPU kernels, and CUDA C++ kernels where built with CUDA.

Loading, once per process, on first use (``available()``; importing qa_kernels never builds):

1. the prebuilt library ``qa_kernels/_C*.so`` that ``setup.py`` builds ahead of time, unless a
   source checkout holds newer csrc/ sources (an editable install being developed);
2. else a just-in-time build of csrc/ with ``torch.utils.cpp_extension.load`` (ninja), cached in
   ``$QA_KERNELS_CACHE`` or ``~/.cache/qa_kernels/torch-<version>/`` and rebuilt when sources change.

Both register the ``qa_kernels_native`` ops; registering them twice aborts the process, so exactly
one library is ever loaded, and none when the ops are already registered. Any failure (no compiler,
no ninja, a failed build) is remembered with its reason (:func:`unavailable_reason`); asking
(:func:`available`) never warns. What happens next is the backend choice's: ``auto`` falls back
(Triton on CUDA, the torch implementation on CPU, with one warning that gives the reason), an
explicit ``native`` raises with the reason. The package works without the extension.

Environment: ``QA_KERNELS_NO_JIT=1`` skips the just-in-time build (prebuilt only);
``QA_KERNELS_VERBOSE_BUILD=1`` shows the compiler's output.
"""

from __future__ import annotations

import functools
import glob
import importlib.machinery
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

NAMESPACE = "qa_kernels_native"
_PACKAGE_DIR = Path(__file__).resolve().parent
# csrc/ beside the package: present in a source checkout (editable install), absent from a wheel.
CSRC_DIR = _PACKAGE_DIR.parent / "csrc"
# Compiler flags, shared with setup.py (keep the two in step). ATen's at::parallel_for is an inline
# `#pragma omp parallel` where torch is built with OpenMP: without -fopenmp it silently runs on one
# thread. (-fopenmp links libgomp.so.1, the soname torch has already loaded: one OpenMP runtime.)
_OPENMP = ["-fopenmp"] if torch.backends.openmp.is_available() else []
CXX_FLAGS = ["-O3", *_OPENMP]
LD_FLAGS = [*_OPENMP]
NVCC_FLAGS = ["-O3"]

_lock = threading.Lock()


def _ops_registered() -> bool:
    """The qa_kernels_native QA-head ops are already in the dispatcher (from any library)."""
    return hasattr(getattr(torch.ops, NAMESPACE), "qa_head_fwd")


def sources(with_cuda: bool) -> list[str]:
    """Every csrc/*.cpp (other ops share the namespace), plus csrc/cuda/*.cu for a CUDA build."""
    found = sorted(glob.glob(str(CSRC_DIR / "*.cpp")))
    if with_cuda:
        found += sorted(glob.glob(str(CSRC_DIR / "cuda" / "*.cu")))
    return found


def _cuda_build_possible() -> bool:
    """A CUDA-enabled torch and a CUDA toolkit (nvcc) are both here."""
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def _prebuilt_path() -> Optional[Path]:
    """The ahead-of-time build (setup.py), when present and not older than csrc/'s sources."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _PACKAGE_DIR / f"_C{suffix}"
        if path.is_file():
            return path if _is_current(path) else None
    return None


def _is_current(library: Path) -> bool:
    """``library`` exists and is not older than any of csrc/'s sources."""
    newest = max((os.path.getmtime(p) for p in _all_sources()), default=0.0)
    return library.is_file() and os.path.getmtime(library) >= newest


def _all_sources() -> list[str]:
    return [p for ext in ("*.cpp", "*.h", "cuda/*.cu", "cuda/*.cuh") for p in glob.glob(str(CSRC_DIR / ext))]


def build_directory() -> Path:
    root = os.environ.get("QA_KERNELS_CACHE") or Path.home() / ".cache" / "qa_kernels"
    return Path(root) / f"torch-{torch.__version__}"


def _jit_build() -> None:
    """Compiles csrc/ with ninja into the cache and loads it (registering the ops)."""
    from torch.utils import cpp_extension

    srcs = sources(with_cuda=_cuda_build_possible())
    if not srcs:
        raise RuntimeError(f"no prebuilt qa_kernels/_C library and no C++ sources in {CSRC_DIR}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler!r} is not on PATH) to build csrc/")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja) to build csrc/")
    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    built = build_dir / "qa_kernels_native.so"
    if not _is_current(built):  # ninja will compile: say so first
        why = "csrc/ changed since the cached build" if built.is_file() else "no build of csrc/ is cached yet"
        print(
            f"qa_kernels: compiling the native kernels (csrc/) just in time into {build_dir} ({why}); "
            "this takes several minutes on a 2-core machine, once (QA_KERNELS_NO_JIT=1 skips it)",
            file=sys.stderr,
            flush=True,
        )
    cpp_extension.load(
        name="qa_kernels_native",
        sources=srcs,
        extra_cflags=CXX_FLAGS,
        extra_ldflags=LD_FLAGS,
        extra_cuda_cflags=NVCC_FLAGS,
        extra_include_paths=[str(CSRC_DIR)],
        build_directory=str(build_dir),
        is_python_module=False,  # a plain library: torch.ops.load_library, no PyInit needed
        verbose=os.environ.get("QA_KERNELS_VERBOSE_BUILD", "0") == "1",
    )


@functools.cache
def _load() -> Optional[str]:
    """Loads the extension once. Returns None on success, else why it is unavailable."""
    with _lock:
        if _ops_registered():
            return None
        errors = []
        prebuilt = _prebuilt_path()
        if prebuilt is not None:
            try:
                torch.ops.load_library(str(prebuilt))
                return None
            except OSError as e:  # e.g. built against another torch: fall through to the JIT build
                errors.append(f"loading {prebuilt.name} failed ({e})")
        if os.environ.get("QA_KERNELS_NO_JIT", "0") == "1":
            errors.append("QA_KERNELS_NO_JIT=1 forbids the just-in-time build")
        else:
            try:
                _jit_build()
                return None
            except Exception as e:  # any build failure means: fall back, never fail the import
                errors.append(f"building csrc/ failed: {type(e).__name__}: {str(e).strip()[:2000]}")
        return "the native extension is unavailable: " + "; ".join(errors)


def available() -> bool:
    """The extension is loaded (prebuilt, or built now: the first call may compile for a minute)."""
    return _load() is None


def unavailable_reason() -> str:
    reason = _load()
    return reason if reason is not None else "the native extension is available"


def has_kernel(op: str, device_type: str) -> bool:
    """The loaded extension registers ``qa_kernels_native::<op>`` for ``device_type`` ("cpu", or
    "cuda" in a CUDA build). Other csrc/ files add ops to the namespace (spans.cpp: decode_spans)."""
    return available() and _registered_for(op, device_type)


def has_device_kernels(device_type: str) -> bool:
    """The loaded extension has the QA-head kernels for ``device_type``."""
    return has_kernel("qa_head_fwd", device_type)


@functools.cache
def _registered_for(op: str, device_type: str) -> bool:  # asked once the library is loaded: fixed from then on
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return (
        key is not None
        and hasattr(getattr(torch.ops, NAMESPACE), op)
        and torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", key)
    )


def _check_device(hidden: Tensor) -> None:
    if not has_device_kernels(hidden.device.type):
        raise RuntimeError(
            f"QA backend 'native' has no {hidden.device.type} kernels in this build of the extension "
            "(CUDA kernels are built only with a CUDA-enabled torch and a CUDA toolkit)"
        )


# Same signatures and semantics as qa_kernels.torch_impl (see the ops in qa_kernels/ops.py).


def qa_head_fwd(
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    bias: Optional[Tensor],  # (2,)
    start_positions: Optional[Tensor],  # (B,) int32/int64
    end_positions: Optional[Tensor],  # (B,) int32/int64
    num_items: Optional[Tensor],  # ()
    num_items_value: Optional[float],
    cast_dtype: Optional[torch.dtype],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_device(hidden)
    return torch.ops.qa_kernels_native.qa_head_fwd(
        hidden, weight, bias, start_positions, end_positions, num_items, num_items_value, cast_dtype
    )


def qa_head_bwd(
    grad_start: Optional[Tensor],  # (B, S)
    grad_end: Optional[Tensor],  # (B, S)
    grad_loss: Optional[Tensor],  # ()
    hidden: Tensor,  # (B, S, H)
    weight: Tensor,  # (2, H)
    start_logits: Tensor,  # (B, S)
    end_logits: Tensor,  # (B, S)
    lse: Tensor,  # (B, 2) float32, or (0,)
    scale: Tensor,  # (2,) float32, or (0,)
    start_positions: Optional[Tensor],  # (B,)
    end_positions: Optional[Tensor],  # (B,)
    cast_dtype: Optional[torch.dtype],
    needs_grad_hidden: bool,
    needs_grad_weight: bool,
    needs_grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_device(hidden)
    return torch.ops.qa_kernels_native.qa_head_bwd(
        grad_start, grad_end, grad_loss, hidden, weight, start_logits, end_logits, lse, scale,
        start_positions, end_positions, cast_dtype,
        needs_grad_hidden, needs_grad_weight, needs_grad_bias,
    )  # fmt: skip
