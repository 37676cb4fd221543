"""The native extension (csrc/): C++ CPU kernels, and CUDA C++ kernels where built with CUDA.

Loading, once per process, on first use (``available()``; importing qa_kernels never builds):

1. the prebuilt library ``qa_kernels/_C*.so`` that ``setup.py`` builds at install time, unless a
   source checkout holds newer csrc/ sources (an editable install being developed);
2. else a just-in-time build of the sources (the checkout's csrc/, or the copy every wheel carries
   as ``qa_kernels/csrc/``) with ``torch.utils.cpp_extension.load`` (ninja), cached in
   ``$QA_KERNELS_CACHE`` or ``~/.cache/qa_kernels/torch-<version>/`` and rebuilt when sources change.

Both register the ``qa_kernels_native`` ops; registering them twice aborts the process, so exactly
one library is ever loaded, and none when the ops are already registered. Any failure (no compiler,
no ninja, a failed build) is remembered with its reason (:func:`unavailable_reason`); asking
(:func:`available`) never warns. What happens next is the backend choice's: ``auto`` falls back
(Triton on CUDA, the torch implementation on CPU, with one warning that gives the reason), an
explicit ``native`` raises with the reason. The package works without the extension. The reason
includes what the install-time build recorded (``qa_kernels/_build.json``: why it failed or was
skipped); :func:`report` gathers all of it for ``qa-kernels doctor``.

Environment: ``QA_KERNELS_NO_JIT=1`` skips the just-in-time build (prebuilt only);
``QA_KERNELS_VERBOSE_BUILD=1`` shows the compiler's output.
"""

from __future__ import annotations

import functools
import importlib.machinery
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

NAMESPACE = "qa_kernels_native"
_PACKAGE_DIR = Path(__file__).resolve().parent
# A source checkout (an editable install) has csrc/ beside the package, and its sources may be newer
# than its prebuilt library; an installed wheel carries a copy of them inside the package.
_SOURCE_CHECKOUT = (_PACKAGE_DIR.parent / "csrc").is_dir() and (_PACKAGE_DIR.parent / "setup.py").is_file()
CSRC_DIR = _PACKAGE_DIR.parent / "csrc" if _SOURCE_CHECKOUT else _PACKAGE_DIR / "csrc"
BUILD_RECORD = _PACKAGE_DIR / "_build.json"  # written by setup.py: what the install-time build did
# Compiler flags, shared with setup.py (keep the two in step). ATen's at::parallel_for is an inline
# `#pragma omp parallel` where torch is built with OpenMP: without -fopenmp it silently runs on one
# thread. (-fopenmp links libgomp.so.1, the soname torch has already loaded: one OpenMP runtime.)
_OPENMP = ["-fopenmp"] if torch.backends.openmp.is_available() else []
CXX_FLAGS = ["-O3", *_OPENMP]
LD_FLAGS = [*_OPENMP]
NVCC_FLAGS = ["-O3"]

_lock = threading.Lock()
_loaded_from: Optional[str] = None  # the library that registered the ops, once loaded


def _ops_registered() -> bool:
    """The qa_kernels_native QA-head ops are already in the dispatcher (from any library)."""
    return hasattr(getattr(torch.ops, NAMESPACE), "qa_head_fwd")


def sources(with_cuda: bool) -> list[str]:
    """Every ``.cpp`` file under csrc/ (each op's folder adds its kernels to the one namespace), plus
    every ``.cu`` file for a CUDA build. Basenames are unique: ninja names objects after them."""
    found = sorted(str(p) for p in CSRC_DIR.rglob("*.cpp"))
    if with_cuda:
        found += sorted(str(p) for p in CSRC_DIR.rglob("*.cu"))
    return found


def _cuda_build_possible() -> bool:
    """A CUDA-enabled torch and a CUDA toolkit (nvcc) are both here."""
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def _prebuilt_file() -> Optional[Path]:
    """The library setup.py built at install time, if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _PACKAGE_DIR / f"_C{suffix}"
        if path.is_file():
            return path
    return None


def _prebuilt_path() -> Optional[Path]:
    """The install-time build, unless a source checkout's csrc/ is newer (an installed wheel's copy
    of the sources is the one it was built from, whatever its files' times)."""
    path = _prebuilt_file()
    return path if path is not None and (not _SOURCE_CHECKOUT or _is_current(path)) else None


def build_record() -> Optional[dict]:
    """What setup.py recorded: ``{"native": "built" | "failed" | "skipped", "reason", "torch",
    "cuda"}``, or None (no record: a source checkout built before records existed, or by hand)."""
    try:
        return json.loads(BUILD_RECORD.read_text())
    except (OSError, ValueError):
        return None


def _is_current(library: Path) -> bool:
    """``library`` exists and is not older than any of csrc/'s sources."""
    newest = max((os.path.getmtime(p) for p in _all_sources()), default=0.0)
    return library.is_file() and os.path.getmtime(library) >= newest


def _all_sources() -> list[str]:
    return [str(p) for ext in ("*.cpp", "*.h", "*.cu", "*.cuh") for p in CSRC_DIR.rglob(ext)]


def build_directory() -> Path:
    root = os.environ.get("QA_KERNELS_CACHE") or Path.home() / ".cache" / "qa_kernels"
    return Path(root) / f"torch-{torch.__version__}"


def cached_library() -> Path:
    """Where the just-in-time build puts its library."""
    return build_directory() / "qa_kernels_native.so"


def _jit_build() -> str:
    """Compiles csrc/ with ninja into the cache and loads it (registering the ops)."""
    from torch.utils import cpp_extension

    srcs = sources(with_cuda=_cuda_build_possible())
    if not srcs:
        raise RuntimeError(f"no C++ sources in {CSRC_DIR}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler!r} is not on PATH) to build csrc/")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja) to build csrc/")
    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    built = cached_library()
    if not _is_current(built):  # ninja will compile: say so first
        why = "the sources changed since the cached build" if built.is_file() else "no build is cached yet"
        print(
            f"qa_kernels: compiling the native kernels ({CSRC_DIR}) just in time into {build_dir} ({why}); "
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
    return str(built)


@functools.cache
def _load() -> Optional[str]:
    """Loads the extension once. Returns None on success, else why it is unavailable."""
    global _loaded_from
    with _lock:
        if _ops_registered():
            _loaded_from = _loaded_from or "registered before qa_kernels loaded it"
            return None
        errors = []
        prebuilt = _prebuilt_path()
        if prebuilt is not None:
            try:
                torch.ops.load_library(str(prebuilt))
                _loaded_from = str(prebuilt)
                return None
            except OSError as e:  # e.g. built against another torch: fall through to the JIT build
                errors.append(f"loading {prebuilt.name} failed ({e})")
        else:
            record = build_record()
            if record is not None and record.get("native") != "built":
                errors.append(f"the install-time build {record.get('native')} ({record.get('reason')})")
        if os.environ.get("QA_KERNELS_NO_JIT", "0") == "1":
            errors.append("QA_KERNELS_NO_JIT=1 forbids the just-in-time build")
        else:
            try:
                _loaded_from = _jit_build()
                return None
            except Exception as e:  # any build failure means: fall back, never fail the import
                errors.append(f"the just-in-time build failed: {type(e).__name__}: {str(e).strip()[:2000]}")
        return "the native extension is unavailable: " + "; ".join(errors)


def available() -> bool:
    """The extension is loaded (prebuilt, or built now: the first call may compile for a minute)."""
    return _load() is None


def unavailable_reason() -> str:
    reason = _load()
    return reason if reason is not None else "the native extension is available"


def needs_compile() -> bool:
    """Loading would compile first: no usable prebuilt library, no current cached build, and the ops
    not registered yet."""
    return _prebuilt_path() is None and not _is_current(cached_library()) and not _ops_registered()


def report(load: bool = False) -> dict[str, str]:
    """What ``qa-kernels doctor`` says about the extension: its sources, what the install-time build
    recorded, the prebuilt and cached libraries, whether it loads and for which devices. Loading is
    tried only where a library exists (one that then fails to load still leads to a just-in-time
    build), unless ``load``, which may compile for minutes."""
    record = build_record()
    prebuilt = _prebuilt_file()
    cached = cached_library()
    facts = {
        "sources": f"{CSRC_DIR} ({'source checkout' if _SOURCE_CHECKOUT else 'installed copy'}"
        f"{'' if sources(with_cuda=False) else ', missing'})",
        "install-time build": "no record"
        if record is None
        else f"{record.get('native')}{f' ({reason})' if (reason := record.get('reason')) else ''}, "
        f"against torch {record.get('torch')}, {'with' if record.get('cuda') else 'without'} CUDA kernels",
        "prebuilt library": "none"
        if prebuilt is None
        else f"{prebuilt}{'' if _prebuilt_path() else ' (older than the sources: not used)'}",
        "just-in-time build": f"{cached}{' (current)' if _is_current(cached) else ' (none current)'}",
    }
    if not load and needs_compile():
        facts["loaded"] = "not yet: the first use compiles the sources just in time (minutes); --build does it now"
        return facts
    reason = _load()
    facts["loaded"] = f"yes, from {_loaded_from}" if reason is None else f"no: {reason}"
    if reason is None:
        devices = [d for d in ("cpu", "cuda") if has_device_kernels(d)]
        facts["kernels for"] = ", ".join(devices) or "no device"
    return facts


def has_kernel(op: str, device_type: str) -> bool:
    """The loaded extension registers ``qa_kernels_native::<op>`` for ``device_type`` ("cpu", or
    "cuda" in a CUDA build). Each op's folder under csrc/ adds its kernels to the one namespace."""
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
