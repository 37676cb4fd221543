"""The Triton kernels (QA head and span decoding) compiled for Hopper (sm_90) by the real compiler,
no GPU needed, and the launches the interpreter lets through that a GPU would refuse.

The CPU interpreter runs the kernels' arithmetic but never compiles them; this compiles every
variant the launchers use (dtypes, autocast rounding, int32/int64 positions, every gradient
subset; sizes divisible by 16 and not, which the launcher specializes on) to a cubin and checks that
none spills registers to local memory. The interpreter also runs any grid; CUDA caps grid dims 1 and
2 at 65535, so every launcher's grid is checked at long rows and large batches with the GPU's blocks.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = pathlib.Path(__file__).with_name("triton_aot.py")


@pytest.fixture(scope="module")
def compiled_variants() -> list[dict]:
    try:  # the ahead-of-time API this check uses (Triton 3.x); anything else failing is a failure
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as err:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {err}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parent.parent), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90"], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_every_variant_compiles_for_sm90(compiled_variants):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import triton_aot
    finally:
        sys.path.pop(0)
    expected = [label for _, label, *_ in [*triton_aot.variants(), *triton_aot.span_variants()]]
    assert [row["variant"] for row in compiled_variants] == expected


def test_no_register_spills(compiled_variants):
    if not all("regs" in row for row in compiled_variants):
        pytest.skip("cuobjdump did not report resource usage")
    spilled = [row for row in compiled_variants if row["stack"] or row["local"]]
    assert not spilled, f"variants spilling registers: {spilled}"


# CUDA's grid limits: dim 0 up to 2**31 - 1, dims 1 and 2 up to 65535.
_GRID_LIMITS = (2**31 - 1, 65535, 65535)


class _GridRecorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` records the grid and runs nothing."""

    def __init__(self, name: str, grids: list):
        self.name, self.grids = name, grids

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.grids.append((self.name, tuple(grid)))


@pytest.mark.parametrize(
    "B,S",
    [
        (1, 2**21),  # a 2M-token row: 131072 S-blocks of the forward, 65536 of the one-pass forward and backward
        (2**17, 384),  # a batch past 65535 rows
    ],
)
def test_launch_grids_fit_cuda_limits(monkeypatch, B, S):
    from qa_kernels.ops.decode_spans import triton_impl as spans_k
    from qa_kernels.ops.qa_head import triton_impl as head_k

    grids: list = []
    for module in (head_k, spans_k):
        monkeypatch.setattr(module, "triton_interpreter_on", lambda: False)  # the GPU's blocks
        for name in dir(module):
            if name.startswith("_") and name.endswith("_kernel"):
                monkeypatch.setattr(module, name, _GridRecorder(name, grids))
    H, meta = 8, dict(device="meta")  # shapes only: nothing is allocated or computed
    hidden = torch.empty((B, S, H), dtype=torch.bfloat16, **meta)
    weight = torch.empty((2, H), dtype=torch.bfloat16, **meta)
    positions = torch.empty((B,), dtype=torch.int64, **meta)
    # one_pass: its forward blocks (BLOCK_S = 32) and the combine kernel's grid over H
    start, end, _, lse, scale, *_ = head_k.qa_head_fwd(hidden, weight, weight[0], positions, positions, None, None,
                                                      None, True)  # fmt: skip
    head_k.qa_head_fwd(hidden, weight, weight[0], positions, positions, None, None, None, False)  # BLOCK_S = 16
    head_k.qa_head_bwd(start, end, torch.empty((), **meta), hidden, weight, start, end, lse, scale,
                       positions, positions, None, True, True, True)  # fmt: skip
    spans_k.decode_spans(start[:, :65535], end[:, :65535], None, 30, 20, False)

    assert {name for name, _ in grids} == {"_qa_logits_kernel", "_qa_loss_kernel", "_qa_one_pass_combine_kernel",
                                           "_qa_head_bwd_kernel", "_qa_reduce_kernel",
                                           "_decode_spans_kernel"}  # fmt: skip
    for name, grid in grids:
        assert len(grid) <= 3, (name, grid)
        assert all(0 < n <= limit for n, limit in zip((*grid, 1, 1)[:3], _GRID_LIMITS, strict=True)), (name, grid)


def test_split_grid_gives_the_same_results(monkeypatch, device):
    """Past 65535 S-blocks the token kernels split them over grid dims 1 and 2, the last programs lying
    past S. Run with the limit lowered to 2: S = 600 is 3 blocks of the interpreter's 256 tokens (38 and
    19 of the GPU's 16 and 32), so (B, 2, 2) programs with one past S (the GPU's backward: (B, 2, 10))."""
    import qa_kernels
    from qa_kernels import backend as qa_backend
    from qa_kernels.ops.qa_head import triton_impl as head_k

    if device == "cpu" and not qa_backend.triton_interpreter_on():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    generator = torch.Generator().manual_seed(0)
    B, S, H = 2, 600, 48
    hidden = torch.randn(B, S, H, generator=generator).to(device)
    weight = (torch.randn(2, H, generator=generator) * 0.05).to(device)
    bias = torch.randn(2, generator=generator).to(device)
    positions = torch.tensor([[5, 599], [300, 700]], device=device)  # 700: ignored
    upstream = torch.randn(B, S, generator=generator).to(device)

    def run():
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        with qa_kernels.use_backend("triton"):
            out = qa_kernels.qa_head(*leaves, positions[:, 0], positions[:, 1])
        (out.loss + (out.start_logits * upstream).sum() + (out.end_logits * upstream).sum()).backward()
        return [out.start_logits, out.end_logits, out.loss], [t.grad for t in leaves]

    whole, whole_grads = run()
    grids, token_grid = [], head_k._token_grid

    def recorded_grid(*args):
        grids.append(token_grid(*args))
        return grids[-1]

    monkeypatch.setattr(head_k, "_MAX_GRID", (2**31 - 1, 2, 65535))
    monkeypatch.setattr(head_k, "_token_grid", recorded_grid)
    split, split_grads = run()
    assert grids and all(grid[2] > 1 for grid in grids), grids
    # per token (logits, loss, grad_hidden): bitwise; the reductions over tokens sum more (zero) partials
    names = ["start", "end", "loss", "dh"]
    for a, b, name in zip([*whole, whole_grads[0]], [*split, split_grads[0]], names, strict=True):
        assert torch.equal(a, b), name
    for a, b, name in zip(whole_grads[1:], split_grads[1:], ["dw", "db"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
