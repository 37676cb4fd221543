"""setup.py exists for the native extension only (csrc/); metadata lives in pyproject.toml.

When torch is importable at build time (``pip install --no-build-isolation .``, as the Makefile
does), csrc/ is compiled ahead of time with ninja into ``qa_kernels/_C`` (every csrc/*.cpp, plus
csrc/cuda/*.cu where torch has CUDA and a toolkit is installed). ``QA_KERNELS_NO_BUILD=1`` skips it.
Without an ahead-of-time build, qa_kernels/native.py builds csrc/ just in time on first use; a
failed build here warns and leaves that path (and the pure-PyTorch fallback) in place.
"""

import glob
import os

from setuptools import setup

# Keep in step with CXX_FLAGS / LD_FLAGS / NVCC_FLAGS in qa_kernels/native.py (the just-in-time
# build): -fopenmp where torch's at::parallel_for is OpenMP, else it runs on one thread.
NVCC_FLAGS = ["-O3"]


def native_extension() -> dict:
    if os.environ.get("QA_KERNELS_NO_BUILD", "0") == "1":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # an isolated build without torch: qa_kernels builds csrc/ on first use
        return {}

    class OptionalBuildExtension(BuildExtension):
        """A failed compile is a warning, not a failed install: the package still works."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # compiler missing or failing: fall back at run time
                print(f"WARNING: qa_kernels: building the native extension failed ({e}); "
                      "qa_kernels will try a just-in-time build on first use, else fall back to PyTorch")  # fmt: skip

    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob("csrc/*.cpp"))  # relative: setuptools wants paths under setup.py's folder
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
    extension = (CUDAExtension if with_cuda else CppExtension)(
        "qa_kernels._C",
        sources,
        include_dirs=[os.path.join(here, "csrc")],  # absolute: ninja builds from another folder
        extra_compile_args={"cxx": ["-O3", *openmp], "nvcc": NVCC_FLAGS},
        extra_link_args=openmp,
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}}


setup(**native_extension())
