"""Shared fixtures. Without a GPU the Triton kernels run on CPU tensors through Triton's
interpreter, which reads TRITON_INTERPRET when a kernel is decorated: set it before qa_kernels
imports its kernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

import qa_kernels
from qa_kernels import backend as qa_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def backends_under_test() -> list[str]:
    """Every concrete implementation that can run here: all are held to the same tests."""
    names = ["torch"]
    if qa_backend.triton_available() and (DEVICE == "cuda" or qa_backend.triton_interpreter_on()):
        names.append("triton")
    if qa_backend.native_available():
        names.append("native")
    return names


REQUIRE_NATIVE = os.environ.get("QA_KERNELS_REQUIRE_NATIVE") == "1"
REQUIRE_TRITON = os.environ.get("QA_KERNELS_REQUIRE_TRITON") == "1"


def pytest_sessionstart(session):
    """CI sets QA_KERNELS_REQUIRE_NATIVE=1 and QA_KERNELS_REQUIRE_TRITON=1: a broken native build
    (or one without this device's kernels), a missing Triton or a switched-off interpreter must fail
    the run, not shrink the backend matrix in silence."""
    from qa_kernels import native

    if REQUIRE_NATIVE:
        if not qa_backend.native_available():
            pytest.exit(f"QA_KERNELS_REQUIRE_NATIVE=1 but {native.unavailable_reason()}", returncode=1)
        missing = [op for op in ("qa_head_fwd", "qa_head_bwd", "decode_spans") if not native.has_kernel(op, DEVICE)]
        if DEVICE == "cuda":  # span decoding has no CUDA C++ kernel (Triton's serves CUDA)
            missing = [op for op in missing if op != "decode_spans"]
        if missing:
            pytest.exit(f"QA_KERNELS_REQUIRE_NATIVE=1 but the native extension has no {DEVICE} kernel for {missing}", 1)
    if REQUIRE_TRITON and "triton" not in backends_under_test():
        why = "triton is not installed" if not qa_backend.triton_available() else "TRITON_INTERPRET is not 1 on CPU"
        pytest.exit(f"QA_KERNELS_REQUIRE_TRITON=1 but {why}", returncode=1)


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(params=backends_under_test())
def backend(request):
    """Runs the test once per implementation, with that backend forced."""
    with qa_kernels.use_backend(request.param):
        try:
            qa_backend.resolve(DEVICE)
        except RuntimeError as err:  # e.g. a Triton interpreter that cannot run here: say why
            if (request.param == "native" and REQUIRE_NATIVE) or (request.param == "triton" and REQUIRE_TRITON):
                pytest.fail(f"backend {request.param} is required here but cannot run: {err}")
            pytest.skip(str(err))
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
