"""Facts about the environment (is Triton installed, is its interpreter on, can it run here), in a
leaf module: the backend choice and the Triton launchers both ask, and neither imports the other."""

from __future__ import annotations

import functools
import os
import re


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
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"not a version number: {version!r}")
    return int(found.group(1)), int(found.group(2))


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
