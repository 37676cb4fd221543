"""A quick self-check: the fused head against the eager reference on this machine's device.

For each backend that can run here and each dtype: the largest error of the logits, the loss and
the three gradients against a float64 reference, and the fwd+bwd time of eager vs fused (medians).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch

from . import backend as qa_backend
from . import reference
from .functional import qa_head


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _fwd_bwd(fn: Callable, hidden, weight, bias, start, end, upstream):
    leaves = [t.detach().requires_grad_() for t in (hidden, weight, bias)]
    out = fn(*leaves, start, end)
    g_start, g_end, g_loss = upstream
    objective = (out.start_logits.float() * g_start).sum() + (out.end_logits.float() * g_end).sum()
    objective = objective + out.loss * g_loss
    grads = torch.autograd.grad(objective, leaves)
    return [out.start_logits, out.end_logits, out.loss, *grads]


def _median_ms(fn: Callable[[], object], device: str, reps: int) -> float:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def available_backends(device: str) -> list[str]:
    names = []
    if qa_backend.triton_available() and (device == "cuda" or qa_backend.triton_interpreter_on()):
        names.append("triton")
    if qa_backend.native_available():
        names.append("native")
    names.append("torch")
    return names


def run(shape: tuple[int, int, int] | None = None, reps: int | None = None) -> bool:
    """Prints the check's table; returns whether every error is within its dtype's tolerance."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    B, S, H = shape or ((32, 384, 1024) if device == "cuda" else (4, 384, 768))
    reps = reps or (50 if device == "cuda" else 5)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
    # Norm-relative error bounds (max |err| / max |exact|), as in tests/utils.py.
    tolerance = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    print(f"qa_kernels self-check on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, B={B} S={S} H={H}, fwd+bwd, median of {reps}")  # fmt: skip
    if device == "cpu" and not qa_backend.triton_interpreter_on():
        print("  (triton: skipped on CPU unless TRITON_INTERPRET=1 is set)")
    header = f"{'backend':8} {'dtype':9} {'max rel err':>11} {'eager ms':>9} {'fused ms':>9} {'speed-up':>8}  ok"
    print(header)
    print("-" * len(header))
    all_ok = True
    torch.manual_seed(0)
    for dtype in dtypes:
        hidden = torch.randn(B, S, H, device=device, dtype=dtype)
        weight = (torch.randn(2, H, device=device) * 0.05).to(dtype)
        bias = (torch.randn(2, device=device) * 0.1).to(dtype)
        start = torch.randint(-2, S + 2, (B,), device=device)  # some clamp to 0, some are ignored
        end = torch.randint(0, S, (B,), device=device)
        upstream = (
            torch.randn(B, S, device=device),
            torch.randn(B, S, device=device),
            torch.tensor(1.3, device=device),
        )
        exact = _fwd_bwd(reference.qa_head, hidden.double(), weight.double(), bias.double(), start, end, upstream)
        args = (hidden, weight, bias, start, end, upstream)
        eager_ms = _median_ms(functools.partial(_fwd_bwd, reference.qa_head, *args), device, reps)
        for name in available_backends(device):
            with qa_backend.use_backend(name):
                got = _fwd_bwd(qa_head, *args)
                fused_ms = _median_ms(functools.partial(_fwd_bwd, qa_head, *args), device, reps)
            errors = [(g.double() - e).abs().max() / e.abs().max() for g, e in zip(got, exact, strict=True)]
            err = max(errors).item()
            ok = err <= tolerance[dtype]
            all_ok &= ok
            print(f"{name:8} {str(dtype).removeprefix('torch.'):9} {err:11.2e} {eager_ms:9.2f} {fused_ms:9.2f} "
                  f"{eager_ms / fused_ms:7.2f}x  {'yes' if ok else 'NO'}")  # fmt: skip
    print("all within tolerance" if all_ok else "SOME ERRORS ARE OUT OF TOLERANCE")
    return all_ok
