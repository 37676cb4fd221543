"""The CPU timer of ``qa-kernels bench`` (``qa_kernels.bench.harness.Timer``): what each timed call
starts from (gradients reset, torch's threads), and that it spends its warm-up and repetition
budgets. Lower bounds on time only (a sleep inside the call): the machine running the tests is
shared."""

import time

import pytest
import torch

from qa_kernels.bench.harness import Timer


def _sleeper(calls: list, leaf: torch.Tensor, sleep_s: float = 0.001):
    """A call that records (start time, whether ``leaf.grad`` was reset, torch's threads) and then
    accumulates a gradient into ``leaf``."""

    def fn():
        calls.append((time.perf_counter(), leaf.grad is None, torch.get_num_threads()))
        time.sleep(sleep_s)
        (leaf * 2).sum().backward()

    return fn


def test_every_timed_call_starts_from_reset_gradients():
    leaf = torch.zeros(3, requires_grad=True)
    calls: list = []
    times = Timer("cpu", warmup_ms=5, rep_ms=20)(_sleeper(calls, leaf), [leaf])
    assert times
    assert all(reset for _, reset, _ in calls[-len(times) :])
    assert min(times) >= 1.0  # ms: each timed call sleeps 1 ms


def test_without_leaves_the_gradients_accumulate():
    """The reset is the timer's doing: with no leaves given, nothing resets them."""
    leaf = torch.zeros(3, requires_grad=True)
    calls: list = []
    Timer("cpu", warmup_ms=0, rep_ms=5)(_sleeper(calls, leaf))
    assert not calls[-1][1]


@pytest.mark.parametrize("threads", [1, 2])
def test_calls_run_on_torchs_threads(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaf = torch.zeros(3, requires_grad=True)
        calls: list = []
        Timer("cpu", warmup_ms=2, rep_ms=5)(_sleeper(calls, leaf), [leaf])
        assert {n for _, _, n in calls} == {threads}
    finally:
        torch.set_num_threads(before)


def test_warmup_and_rep_budgets_are_spent():
    leaf = torch.zeros(3, requires_grad=True)
    calls: list = []
    times = Timer("cpu", warmup_ms=20, rep_ms=30)(_sleeper(calls, leaf), [leaf])
    warmup = len(calls) - len(times)
    # do_bench's first call and five-call estimate (torch's timeit adds two before them), then
    # warmup_ms / estimate more (and timeit's two): at most 20 of 1 ms or longer.
    assert 9 <= warmup <= 9 + 20
    assert 1 <= len(times) <= 30  # rep_ms / the estimate, which is at least the 1 ms sleep


def test_zero_budgets_still_time_one_call():
    leaf = torch.zeros(3, requires_grad=True)
    calls: list = []
    times = Timer("cpu", warmup_ms=0, rep_ms=0)(_sleeper(calls, leaf), [leaf])
    assert len(times) == 1
    assert len(calls) == 2 + 5 + 2 + 1  # the estimate, an empty warm-up (timeit's own calls), one sample
