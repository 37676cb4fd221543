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
    """Every concrete implementation of the head that can run here (the registry says): all are held
    to the same tests."""
    return [name for name in ("torch", "triton", "native") if qa_backend.unavailable("qa_head", name, DEVICE) is None]


REQUIRE_NATIVE = os.environ.get("QA_KERNELS_REQUIRE_NATIVE") == "1"
REQUIRE_TRITON = os.environ.get("QA_KERNELS_REQUIRE_TRITON") == "1"


def pytest_sessionstart(session):
    """CI sets QA_KERNELS_REQUIRE_NATIVE=1 and QA_KERNELS_REQUIRE_TRITON=1: a broken native build
    (or one without this device's kernels), a missing Triton or a switched-off interpreter must fail
    the run, not shrink the backend matrix in silence."""
    for required, name in ((REQUIRE_NATIVE, "native"), (REQUIRE_TRITON, "triton")):
        if not required:
            continue
        for entry in qa_backend.TABLE:  # each op it has a kernel for on this device, by the registry
            if entry.backend == name and DEVICE in entry.devices:
                reason = qa_backend.unavailable(entry.op, name, DEVICE)
                if reason is not None:
                    pytest.exit(f"QA_KERNELS_REQUIRE_{name.upper()}=1 but {entry.op} cannot run: {reason}", 1)


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(params=backends_under_test())
def backend(request):
    """Runs the test once per implementation, with that backend forced."""
    with qa_kernels.use_backend(request.param):
        try:
            qa_backend.resolve("qa_head", DEVICE)
        except RuntimeError as err:  # e.g. a Triton interpreter that cannot run here: say why
            if (request.param == "native" and REQUIRE_NATIVE) or (request.param == "triton" and REQUIRE_TRITON):
                pytest.fail(f"backend {request.param} is required here but cannot run: {err}")
            pytest.skip(str(err))
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
