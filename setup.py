"""setup.py builds the native extension (csrc/) into ``qa_kernels/_C``; the metadata is in pyproject.toml.

The extension must be compiled against the torch it will run with, so the build looks for that one:

- without build isolation (``pip install --no-build-isolation .``, as the Makefile does): the torch
  of the environment;
- with pip's default build isolation: the build environment has no torch (asking for one there would
  download the newest release, several GB with CUDA), so setup.py asks the interpreter that pip runs,
  the one it installs into, where its torch lives, and imports that torch (the build environment's
  own packages stay first on sys.path);
- neither (torch is not installed yet, or a frontend that builds in a separate environment such as
  ``python -m build``): no library is built.

Every wheel carries the sources (as ``qa_kernels/csrc/``), so that qa_kernels can compile them just in
time on first use when the wheel has no library, and a record of this build
(``qa_kernels/_build.json``: built, failed and why, or skipped and why) that ``qa-kernels doctor`` and
the first-use warning report. A failed compile warns and does not fail the install: the package
works without the extension. pip shows a successful build's output only with ``-v``, so the warning
is also written to the terminal when there is one. ``QA_KERNELS_NO_BUILD=1`` skips the compile.

Compiler flags: keep them in step with CXX_FLAGS / LD_FLAGS / NVCC_FLAGS in qa_kernels/native.py
(the just-in-time build).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = "_build.json"  # inside the package
NVCC_FLAGS = ["-O3"]


def warn(message: str) -> None:
    """To the build log, and to the terminal when pip is hiding the log."""
    text = f"\nWARNING: qa_kernels: {message}\n"
    print(text, file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        return
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(text)
    except OSError:  # no terminal (CI, a service): the build log has it
        pass


def find_torch() -> tuple[object, str]:
    """(the torch module, "") or (None, why there is none)."""
    try:
        import torch

        return torch, ""
    except ImportError:
        pass
    # pip's isolated build: PYTHONPATH points at the build environment and PYTHONNOUSERSITE hides the
    # user's site; without them the same interpreter sees the packages of the environment installed into.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"
    found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    if found.returncode != 0:
        return None, (
            f"torch does not import for {sys.executable}, the interpreter this build runs on: install torch "
            "before qa-kernels (the extension is compiled against it); a frontend that builds in an "
            "environment of its own (python -m build, uv) needs --no-build-isolation to see it"
        )
    sys.path.append(found.stdout.strip().splitlines()[-1])  # after the build environment's own packages
    try:
        import torch

        return torch, ""
    except Exception as e:  # a torch that does not import here cannot be built against
        return None, f"the installed torch does not import in the build ({type(e).__name__}: {e})"


def write_record(folder: str, record: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RECORD), "w") as f:
        json.dump(record, f, indent=1)


class BuildPy(build_py):
    """Adds csrc/ (for the just-in-time build) and the build record to the package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the source checkout's csrc/ is used in place
            return
        package = os.path.join(self.build_lib, "qa_kernels")
        target = os.path.join(package, "csrc")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "csrc"), target, ignore=shutil.ignore_patterns("*.md"))
        if RECORD_STATE["reason"]:  # nothing will be compiled: no earlier build's library may ship
            for stale in glob.glob(os.path.join(package, "_C*.so")):
                os.remove(stale)
        write_record(package, RECORD_STATE)  # build_ext, which runs next when there is an extension, rewrites it


RECORD_STATE: dict = {"native": "skipped", "reason": "", "torch": None, "cuda": False}


def native_extension() -> dict:
    commands: dict = {"build_py": BuildPy}
    if os.environ.get("QA_KERNELS_NO_BUILD", "0") == "1":
        RECORD_STATE["reason"] = "QA_KERNELS_NO_BUILD=1 was set at install time"
        return {"cmdclass": commands}
    torch, why = find_torch()
    compiler = os.environ.get("CXX", "c++")
    if torch is None:
        RECORD_STATE["reason"] = why
    elif shutil.which(compiler) is None:
        RECORD_STATE["reason"] = f"no C++ compiler at build time ({compiler!r} is not on PATH)"
    if RECORD_STATE["reason"]:
        warn(f"the native CPU kernels were not built: {RECORD_STATE['reason']}. qa_kernels will compile them "
             "just in time on first use if it can, else run the (slower) torch implementation")  # fmt: skip
        return {"cmdclass": commands}

    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None  # type: ignore[attr-defined]
    RECORD_STATE.update(torch=torch.__version__, cuda=with_cuda)  # type: ignore[attr-defined]

    class OptionalBuildExtension(BuildExtension):
        """A failed compile is a warning and a record, not a failed install."""

        def run(self) -> None:
            library = self.get_ext_fullpath("qa_kernels._C")
            try:
                super().run()
            except Exception as e:  # a compiler that fails: qa_kernels still works, and says why
                if os.path.exists(library):  # an earlier build's, left in build/: it must not ship as this one
                    os.remove(library)
                RECORD_STATE.update(native="failed", reason=f"compiling csrc/ with {compiler!r} failed: {e}")
                warn(f"{RECORD_STATE['reason']} (pip install -v shows the compiler's output). qa_kernels will "
                     "try again just in time on first use, else run the (slower) torch implementation")  # fmt: skip
            else:
                RECORD_STATE.update(native="built", reason="")
            write_record(os.path.dirname(library), RECORD_STATE)

    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() else []  # type: ignore[attr-defined]
    # As qa_kernels.native.sources(): every .cpp under csrc/, and every .cu for a CUDA build; paths
    # relative, as setuptools wants them under setup.py's folder.
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    if with_cuda:
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
    extension = (CUDAExtension if with_cuda else CppExtension)(
        "qa_kernels._C",
        sources,
        include_dirs=[os.path.join(HERE, "csrc")],  # absolute: ninja builds from another folder
        extra_compile_args={"cxx": ["-O3", *openmp], "nvcc": NVCC_FLAGS},
        extra_link_args=openmp,
    )
    commands["build_ext"] = OptionalBuildExtension.with_options(use_ninja=True)
    return {"ext_modules": [extension], "cmdclass": commands}


setup(**native_extension())
