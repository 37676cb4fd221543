"""CPU benchmark of the QA head (pytest-benchmark): eager PyTorch (qa_kernels.reference),
torch.compile of that reference, and the native C++ kernels (csrc/).

Modes: ``inference`` (no labels, no autograd: the two logits) and ``fwd+bwd`` (labels, the loss,
and its gradients for hidden, weight and bias). Shapes (B, S, H): BERT-base (8, 384, 768) and
BERT-large SQuAD training (32, 384, 1024); float32 and bfloat16.

    .venv/bin/python -m pytest benchmarks/bench_cpu.py --benchmark-only \\
        --benchmark-group-by=param:mode,param:shape,param:dtype --benchmark-columns=median,iqr,min,rounds

Providers are the innermost parameter, so the three run back to back on each case (the closest
pytest-benchmark gets to interleaving); medians resist the noise of a shared machine. The floor
(``extra_info``) is ``qa_kernels.bench.head.moved_bytes``: inference reads hidden once, fwd+bwd reads
hidden and writes grad_hidden (2 B S H x element size; a CPU reads hidden a second time in the
backward unless it stays cached); the rest is O(B S + H).
"""

from __future__ import annotations

import pytest
import torch

import qa_kernels
from qa_kernels import native, reference
from qa_kernels.bench.head import DTYPES, moved_bytes

DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

SHAPES = [(8, 384, 768), (32, 384, 1024)]
DTYPES = [torch.float32, torch.bfloat16]
MODES = ["inference", "fwd+bwd"]
PROVIDERS = ["eager", "compile", "native"]
WARMUP_ROUNDS = 15


def _native_qa_head(*args, **kwargs):
    with qa_kernels.use_backend("native"):
        return qa_kernels.qa_head(*args, **kwargs)


def _compiled_reference():
    """A fresh compile per case, static shapes, as `qa-kernels bench` compiles it (one compiled
    function over several shapes turns dynamic after the first change: another program)."""
    torch._dynamo.reset()
    return torch.compile(reference.qa_head, dynamic=False)


def _provider(name: str):
    if name == "eager":
        return reference.qa_head
    if name == "compile":
        return _compiled_reference()
    if not native.available():
        pytest.skip(f"native extension unavailable: {native.unavailable_reason()}")
    return _native_qa_head


def _inputs(shape, dtype):
    B, S, H = shape
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, S, H, generator=g).to(dtype)
    weight = (torch.randn(2, H, generator=g) * 0.05).to(dtype)
    bias = (torch.randn(2, generator=g) * 0.1).to(dtype)
    start = torch.randint(0, S, (B,), generator=g)
    end = torch.randint(0, S, (B,), generator=g)
    return hidden, weight, bias, start, end


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
def test_qa_head_cpu(benchmark, mode, shape, dtype, provider):
    fn = _provider(provider)
    hidden, weight, bias, start, end = _inputs(shape, dtype)
    B, S, H = shape

    if mode == "inference":

        def step():
            with torch.no_grad():
                return fn(hidden, weight, bias)

    else:
        leaves = [t.requires_grad_() for t in (hidden, weight, bias)]

        def step():
            out = fn(hidden, weight, bias, start, end)
            return torch.autograd.grad(out.loss, leaves)

    moved = moved_bytes(mode, (B, S, H), DTYPE_NAMES[hidden.dtype])  # the floor's bytes, one definition
    benchmark.extra_info.update(
        threads=torch.get_num_threads(), torch=torch.__version__, bytes=moved, provider=provider, mode=mode
    )
    step()  # warm-up outside the timing (torch.compile compiles here)
    # Then WARMUP_ROUNDS untimed rounds: on the machine measured here (a VM), every provider's
    # first ~15 steps at (32, 384, 1024) run up to 1.7x slower than its steady state (the memory of
    # the inputs and outputs settling in), which 2 warm-up rounds left inside the timed ones.
    benchmark.pedantic(step, rounds=15 if B * S * H > 5_000_000 else 40, iterations=1, warmup_rounds=WARMUP_ROUNDS)
