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


def pytest_sessionstart(session):
    """CI sets QA_KERNELS_REQUIRE_NATIVE=1: a broken native build must fail the run, not shrink the
    backend matrix to torch and triton in silence."""
    if os.environ.get("QA_KERNELS_REQUIRE_NATIVE") == "1" and not qa_backend.native_available():
        from qa_kernels import native

        pytest.exit(f"QA_KERNELS_REQUIRE_NATIVE=1 but {native.unavailable_reason()}", returncode=1)


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
            pytest.skip(str(err))
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
