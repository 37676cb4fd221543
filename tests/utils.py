"""Tolerances, comparisons and the thread harness shared by the test files."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from qa_kernels._env import triton_interpreter_on

# Max |actual - expected| allowed, as a fraction of max |expected| (a norm-relative bound: the
# outputs are sums over H or over B*S, whose rounding error scales with the largest term).
# "fp64": against the reference computed in float64. "eager": against the reference run in the
# same dtype (same rounding points, so a tighter bound for half precision).
# bf16 has 8 mantissa bits (half-ulp 2^-9 ~ 0.2%); the Triton interpreter truncates instead of
# rounding (one ulp, 0.4%), and the gradient goes through two roundings (d_logits, then the
# product), hence ~1.5%.
TOLERANCE = {
    "fp64": {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2},
    "eager": {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2},
    # Eager's half-precision grad_weight / grad_bias are reductions over B*S terms rounded (and on
    # CPU partly accumulated) in half precision; ours accumulate in float32, so here eager is the
    # less accurate side (seen: bf16 grad_bias 3.4% off eager, within 2e-2 of fp64).
    "eager_reduction": {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str, atol: float = 0.0) -> None:
    """max |actual - expected| <= tol * max |expected| + atol, with NaN where (and only where)
    expected has NaN. ``atol`` is for values that are 0 in exact arithmetic (only rounding noise)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan = expected.isnan()
    assert torch.equal(actual.isnan(), nan), f"{name}: NaN where expected has none (or the reverse)"
    actual, expected = actual[~nan], expected[~nan]
    if expected.numel() == 0:
        return
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * scale + atol, f"{name}: max error {err:.3g} > {tol:g} x max|expected| {scale:.3g} + {atol:g}"


def in_threads(n: int, work: Callable[[int], object]) -> None:
    """Runs ``work(i)`` in ``n`` threads started together; re-raises the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as e:  # reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def skip_threads_under_the_interpreter(backend: str) -> None:
    """Triton's interpreter is not thread-safe: it keeps the program ids of a launch in one
    process-global object (triton/runtime/interpreter.py's interpreter_builder)."""
    if backend == "triton" and triton_interpreter_on():
        pytest.skip("Triton's interpreter keeps the program ids of a launch in process-global state")
