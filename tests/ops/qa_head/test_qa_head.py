"""qa_kernels.qa_head against qa_kernels.reference, for every backend that can run here."""

from __future__ import annotations

import contextlib

import pytest
import torch

import qa_kernels
from qa_kernels import reference
from tests.utils import TOLERANCE, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Every B in {1, 3}, S in {1, 7, 384, 513} and H in {31, 768, 1024} appears. Why the odd sizes:
# S=1 (a one-token softmax), S=7 and 513 (not powers of two: masked tails in every S block),
# H=31 (odd, below one block, unaligned rows), H=768/1024 (BERT base/large).
SHAPES = [
    (1, 1, 31),
    (3, 7, 31),
    (1, 384, 768),
    (3, 513, 1024),
    (3, 1, 768),
    (1, 7, 1024),
    (3, 384, 100),  # H = 100: full 32-element blocks plus a remainder (the native bf16 pair layout)
    (1, 513, 768),
]

# (start, end, num_items_in_batch) recipes; "mixed" has negative (-> 0), >= S (ignored) and
# in-range entries, with end given as (B, 1) as multi-GPU code passes it.
LABELS = [
    "none",
    "valid",
    "mixed",
    "all_ignored",
    "start_only",
    "mixed+num_items_int",
    "mixed+num_items_tensor",
    "all_ignored+num_items_tensor",
]


def make_inputs(B, S, H, dtype, device, bias=True, weight_dtype=None):
    hidden = torch.randn(B, S, H, device=device, dtype=dtype)
    # BERT-like initialization scale, so that the logits are O(1).
    weight = (torch.randn(2, H, device=device) * 0.05).to(weight_dtype or dtype)
    b = (torch.randn(2, device=device) * 0.1).to(weight_dtype or dtype) if bias else None
    return hidden, weight, b


def make_labels(kind: str, B: int, S: int, device: str):
    """(start_positions, end_positions, num_items_in_batch) for a LABELS recipe."""
    if kind == "none":
        return None, None, None
    if kind == "valid":
        return torch.randint(0, S, (B,), device=device), torch.randint(0, S, (B,), device=device), None
    if kind.startswith("mixed"):
        # Row b cycles through: negative (-> 0), >= S (ignored), in range, exactly S (ignored).
        choices = torch.tensor([-5, S + 3, S // 2, S], device=device)
        start = choices[torch.arange(B, device=device) % 4]
        end = choices[(torch.arange(B, device=device) + 2) % 4].reshape(B, 1)
        num_items = {"mixed+num_items_int": 3, "mixed+num_items_tensor": torch.tensor(2.5, device=device)}.get(kind)
        return start, end, num_items
    if kind.startswith("all_ignored"):
        start = torch.full((B,), S, device=device)
        end = torch.full((B,), S + 7, device=device)
        num_items = torch.tensor(4, device=device) if kind.endswith("tensor") else None
        return start, end, num_items
    if kind == "start_only":
        return torch.randint(0, S, (B,), device=device), None, None
    raise AssertionError(kind)


def run_head(fn, hidden, weight, bias, start, end, num_items, upstream):
    """Forward + backward with the given upstream gradients; returns outputs and input grads."""
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias) if t is not None]
    h, w = leaves[0], leaves[1]
    b = leaves[2] if bias is not None else None
    out = fn(h, w, b, start, end, num_items_in_batch=num_items)
    g_start, g_end, g_loss = upstream
    objective = (out.start_logits.float() * g_start).sum() + (out.end_logits.float() * g_end).sum()
    if out.loss is not None:
        objective = objective + out.loss.float() * g_loss
    grads = torch.autograd.grad(objective, leaves)
    return out, grads


def assert_all_close(out, grads, ref, ref_grads, tol):
    """Both logits, the loss and the three gradients of two run_head calls (with bias and labels)."""
    for x, y, name in zip([*out, *grads], [*ref, *ref_grads], ["start", "end", "loss", "dh", "dw", "db"], strict=True):
        assert_close(x, y, tol, name)


def random_upstream(B, S, device):
    return torch.randn(B, S, device=device), torch.randn(B, S, device=device), torch.randn((), device=device)


def check_against_reference(dtype, shape, bias, labels, device):
    """Logits, loss and every gradient (random upstream on all three outputs) against the reference
    in the same dtype (eager) and in float64 (exact), with their dtypes, shapes and layouts."""
    B, S, H = shape
    hidden, weight, b = make_inputs(B, S, H, dtype, device, bias)
    start, end, num_items = make_labels(labels, B, S, device)
    upstream = random_upstream(B, S, device)

    out, grads = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, num_items, upstream)
    eager, eager_grads = run_head(reference.qa_head, hidden, weight, b, start, end, num_items, upstream)
    f64 = [t.double() if t is not None else None for t in (hidden, weight, b)]
    exact, exact_grads = run_head(reference.qa_head, *f64, start, end, num_items, upstream)

    assert out.start_logits.dtype == dtype and out.end_logits.dtype == dtype
    assert out.start_logits.shape == (B, S) and out.start_logits.is_contiguous()
    assert out.end_logits.shape == (B, S) and out.end_logits.is_contiguous()
    if labels in ("none", "start_only"):
        assert out.loss is None
    else:
        assert out.loss.dtype == torch.float32 and out.loss.shape == ()
    for ref, grads_ref, kind in ((eager, eager_grads, "eager"), (exact, exact_grads, "fp64")):
        tol = TOLERANCE[kind][dtype]
        assert_close(out.start_logits, ref.start_logits, tol, f"start_logits vs {kind}")
        assert_close(out.end_logits, ref.end_logits, tol, f"end_logits vs {kind}")
        if out.loss is not None:
            assert_close(out.loss, ref.loss, tol, f"loss vs {kind}")
        names = ("hidden", "weight", "bias")[: len(grads)]  # no bias: two gradients
        for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
            assert g.dtype == {"hidden": hidden, "weight": weight, "bias": b}[name].dtype
            g_tol = TOLERANCE["eager_reduction"][dtype] if kind == "eager" and name != "hidden" else tol
            assert_close(g, g_ref, g_tol, f"grad_{name} vs {kind}")


# The labels touch only the O(B*S) loss path, never the H loop, so the matrix is two grids: every
# shape (the kernels' block and tail paths over S and H) with two label recipes (no loss; a loss with
# clamped, ignored and (B, 1) positions), and every label recipe and bias choice at two small shapes
# (S = 1, and S = 513 over several S blocks).
@pytest.mark.parametrize("labels", ["none", "mixed"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_over_shapes(backend, device, dtype, shape, labels):
    check_against_reference(dtype, shape, True, labels, device)


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [(1, 1, 31), (3, 513, 31)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_over_labels(backend, device, dtype, shape, bias, labels):
    check_against_reference(dtype, shape, bias, labels, device)


def test_all_ignored_gives_nan_loss_and_finite_grads(backend, device):
    B, S, H = 3, 7, 31
    hidden, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("all_ignored", B, S, device)
    out, grads = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, random_upstream(B, S, device))
    assert out.loss.isnan()
    assert all(g.isfinite().all() for g in grads)
    # With num_items_in_batch, the same batch gives exactly 0 (a sum of nothing over n).
    out, _ = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, 5, random_upstream(B, S, device))
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ignored_rows_get_exactly_zero_gradient(backend, device, dtype):
    """Loss-only objective: a row whose start and end are both ignored contributes nothing."""
    B, S, H = 3, 384, 768
    hidden, weight, b = make_inputs(B, S, H, dtype, device)
    start = torch.tensor([S, 5, S + 10], device=device)
    end = torch.tensor([S + 1, 9, S], device=device)
    h = hidden.clone().requires_grad_()
    loss = qa_kernels.qa_head(h, weight, b, start, end).loss
    (grad,) = torch.autograd.grad(loss * 2.5, [h])
    assert torch.count_nonzero(grad[0]) == 0 and torch.count_nonzero(grad[2]) == 0
    assert torch.count_nonzero(grad[1]) > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bitwise_deterministic(backend, device, dtype):
    B, S, H = 3, 513, 1024
    hidden, weight, b = make_inputs(B, S, H, dtype, device)
    start, end, _ = make_labels("mixed", B, S, device)
    upstream = random_upstream(B, S, device)
    first = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, upstream)
    second = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, upstream)
    for x, y in zip([*first[0], *first[1]], [*second[0], *second[1]], strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("upstream", ["loss_only", "logits_only", "start_logits_only"])
def test_partial_upstream(backend, device, upstream):
    """Autograd passes None for unused outputs; each combination must match the reference."""
    B, S, H = 3, 7, 31
    hidden, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    g = torch.randn(B, S, device=device)

    def objective(fn):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, b)]
        out = fn(*leaves, start, end)
        value = {
            "loss_only": out.loss * 3.0,
            "logits_only": (out.start_logits * g).sum() + out.end_logits.sum(),
            "start_logits_only": (out.start_logits * g).sum(),
        }[upstream]
        return torch.autograd.grad(value, leaves)

    for name, x, y in zip(
        ("hidden", "weight", "bias"), objective(qa_kernels.qa_head), objective(reference.qa_head), strict=True
    ):
        # Loss only: grad_bias = sum_s (softmax - onehot) * scale = 0 in exact arithmetic, so both
        # sides hold rounding noise (~1e-7), bounded absolutely.
        atol = 1e-6 if name == "bias" and upstream == "loss_only" else 0.0
        assert_close(x, y, TOLERANCE["fp64"][torch.float32], f"grad_{name}", atol=atol)


@pytest.mark.parametrize("needs", ["hidden", "weight", "weight+bias", "hidden+bias"])
def test_gradient_subsets(backend, device, needs):
    """A frozen backbone (no grad for hidden) or a frozen head: only what is needed is computed."""
    B, S, H = 3, 7, 31
    hidden, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("valid", B, S, device)
    flags = {"hidden": "hidden" in needs, "weight": "weight" in needs, "bias": "bias" in needs}

    def grads(fn):
        h, w, bb = (
            t.clone().requires_grad_(flags[n])
            for n, t in zip(("hidden", "weight", "bias"), (hidden, weight, b), strict=True)
        )
        out = fn(h, w, bb, start, end)
        leaves = [t for t in (h, w, bb) if t.requires_grad]
        return torch.autograd.grad(out.loss + out.start_logits.sum(), leaves)

    for x, y in zip(grads(qa_kernels.qa_head), grads(reference.qa_head), strict=True):
        assert_close(x, y, TOLERANCE["fp64"][torch.float32], f"gradients for {needs}")


def test_strided_weight_and_bias(backend, device):
    """A transposed weight ((H, 2) storage) and a bias sliced from a wider tensor; gradients come
    back with the parameters' shapes (and contiguous, as the op's fake kernel says)."""
    B, S, H = 3, 7, 31
    hidden, _, _ = make_inputs(B, S, H, torch.float32, device)
    weight = (torch.randn(H, 2, device=device) * 0.05).t()
    bias = torch.randn(4, device=device)[::2]
    assert not weight.is_contiguous() and not bias.is_contiguous()
    start, end, _ = make_labels("mixed", B, S, device)
    upstream = random_upstream(B, S, device)
    out, grads = run_head(qa_kernels.qa_head, hidden, weight, bias, start, end, None, upstream)
    ref, ref_grads = run_head(reference.qa_head, hidden, weight, bias, start, end, None, upstream)
    tol = TOLERANCE["fp64"][torch.float32]
    assert_all_close(out, grads, ref, ref_grads, tol)


def test_online_logsumexp_with_an_all_minus_inf_first_chunk(backend, device, monkeypatch):
    """The loss kernel's logsumexp runs over S in chunks; a row whose first chunk is all -inf (masked
    or overflowed logits in a long context) must not turn into NaN. A 4-token tile makes the Triton
    kernel chunk even under the interpreter (the other backends do not chunk: same expectation)."""
    from qa_kernels.ops.qa_head import triton_impl as triton_qa_head

    monkeypatch.setattr(triton_qa_head, "_INTERPRETER_LOSS_TILE", 4)
    monkeypatch.setattr(triton_qa_head, "_GPU_LOSS_TILE", 4)
    B, S, H = 3, 13, 31
    hidden, _, _ = make_inputs(B, S, H, torch.float32, device)
    hidden[:, :4] = float("-inf")  # tokens 0-3 of every row: -inf logits with a positive weight
    hidden[1, 6] = float("-inf")
    weight = torch.rand(2, H, device=device) + 0.1
    start = torch.tensor([5, 9, 12], device=device)
    end = torch.tensor([4, 7, 8], device=device)
    out = qa_kernels.qa_head(hidden, weight, None, start, end)
    ref = reference.qa_head(hidden, weight, None, start, end)
    assert torch.isfinite(out.loss)
    assert_close(out.loss, ref.loss, TOLERANCE["fp64"][torch.float32], "loss")


@pytest.mark.parametrize("layout", ["transposed", "sliced_h", "sliced_s", "expanded_batch"])
def test_strided_hidden(backend, device, layout):
    B, S, H = 3, 7, 31
    if layout == "transposed":  # (B, H, S) storage viewed as (B, S, H): stride_h != 1
        hidden = torch.randn(B, H, S, device=device).transpose(1, 2)
    elif layout == "sliced_h":  # every other feature of a wider tensor
        hidden = torch.randn(B, S, 2 * H, device=device)[:, :, ::2]
    elif layout == "sliced_s":  # a window of a longer sequence
        hidden = torch.randn(B, S + 5, H, device=device)[:, 2 : S + 2]
    else:  # one sequence broadcast over the batch: stride_b == 0
        hidden = torch.randn(1, S, H, device=device).expand(B, S, H)
    assert not hidden.is_contiguous()
    _, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    upstream = random_upstream(B, S, device)
    out, grads = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, upstream)
    ref, ref_grads = run_head(reference.qa_head, hidden, weight, b, start, end, None, upstream)
    tol = TOLERANCE["fp64"][torch.float32]
    assert_all_close(out, grads, ref, ref_grads, tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float32_master_weight_with_half_hidden(backend, device, dtype):
    """Weight in float32, activations in half: logits in hidden's dtype, grad_weight in float32."""
    B, S, H = 3, 384, 768
    hidden, weight, b = make_inputs(B, S, H, dtype, device, weight_dtype=torch.float32)
    start, end, _ = make_labels("mixed", B, S, device)
    upstream = random_upstream(B, S, device)
    out, grads = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, upstream)
    exact, exact_grads = run_head(reference.qa_head, hidden.double(), weight.double(), b.double(),
                                  start, end, None, upstream)  # fmt: skip
    assert out.start_logits.dtype == dtype
    assert grads[0].dtype == dtype and grads[1].dtype == torch.float32 and grads[2].dtype == torch.float32
    tol = TOLERANCE["fp64"][dtype]
    assert_all_close(out, grads, exact, exact_grads, tol)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_matches_eager_under_autocast(backend, device, autocast_dtype):
    """fp32 parameters and hidden under autocast: the autocast dtype comes out, as nn.Linear gives."""
    if device == "cpu" and autocast_dtype == torch.float16:
        pytest.skip("CPU autocast is bfloat16 in practice; float16 is exercised on CUDA")
    B, S, H = 3, 384, 768
    hidden, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    upstream = random_upstream(B, S, device)
    with torch.autocast(device, dtype=autocast_dtype):
        out, grads = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, upstream)
        ref, ref_grads = run_head(reference.qa_head, hidden, weight, b, start, end, None, upstream)
    assert out.start_logits.dtype == ref.start_logits.dtype == autocast_dtype
    assert out.loss.dtype == ref.loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float32] * 3
    tol = TOLERANCE["eager"][autocast_dtype]
    assert_all_close(out, grads, ref, ref_grads, tol)


def test_int32_positions(backend, device):
    B, S, H = 3, 7, 31
    hidden, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    out = qa_kernels.qa_head(hidden, weight, b, start.int(), end.int())
    ref = reference.qa_head(hidden, weight, b, start, end)
    assert_close(out.loss, ref.loss, TOLERANCE["fp64"][torch.float32], "loss")


def test_empty_batch(backend, device):
    """B = 0 returns empty logits like eager (and eager's NaN mean loss)."""
    hidden, weight, b = make_inputs(0, 7, 31, torch.float32, device)
    start = torch.zeros(0, dtype=torch.long, device=device)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = qa_kernels.qa_head(h, w, b, start, start)
    ref = reference.qa_head(hidden, weight, b, start, start)
    assert out.start_logits.shape == out.end_logits.shape == (0, 7)
    assert out.loss.isnan() and ref.loss.isnan()
    dh, dw = torch.autograd.grad(out.start_logits.sum(), [h, w])
    assert dh.shape == (0, 7, 31) and torch.count_nonzero(dw) == 0


def test_inputs_never_modified(backend, device):
    B, S, H = 3, 7, 31
    hidden, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)  # negative and out-of-range: eager would clamp_
    before = [t.clone() for t in (hidden, weight, b, start, end)]
    run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, random_upstream(B, S, device))
    for x, y in zip(before, (hidden, weight, b, start, end), strict=True):
        assert torch.equal(x, y)


def test_backend_selection(monkeypatch):
    from qa_kernels import backend as qa_backend

    monkeypatch.setenv("QA_KERNELS_BACKEND", "torch")
    assert qa_kernels.get_backend() == "torch"
    with qa_kernels.use_backend("auto"):
        assert qa_kernels.get_backend() == "auto"
    assert qa_kernels.get_backend() == "torch"
    monkeypatch.setenv("QA_KERNELS_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match=r"the environment variable QA_KERNELS_BACKEND must be one of .*'cuda-please'"):
        qa_kernels.get_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        qa_kernels.set_backend("fast")
    monkeypatch.delenv("QA_KERNELS_BACKEND")
    assert qa_backend.resolve("qa_head", "cuda") == "triton"
    assert qa_backend.resolve("qa_head", "cpu") == ("native" if qa_backend.native_available() else "torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (2^31 elements)")
def test_more_than_2_pow_31_elements(backend, device):
    """B*S*H > 2^31: every offset into hidden and grad_hidden past the int32 range must be int64.
    (B, S, H) = (512, 4096, 1040) in bf16: 4.4 GB for hidden."""
    if backend == "torch":
        pytest.skip("PyTorch's own operators index with int64; its float32 intermediates need 2x the memory")
    B, S, H = 512, 4096, 1040
    assert B * S * H > 2**31
    if torch.cuda.get_device_properties(device).total_memory < 8 * 2 * B * S * H:
        pytest.skip("needs 35 GB of GPU memory: hidden, two copies of it and two gradients (4.4 GB each)")
    dtype = torch.bfloat16
    hidden, weight, b = make_inputs(B, S, H, dtype, device)
    start, end, _ = make_labels("mixed", B, S, device)
    upstream = random_upstream(B, S, device)
    out, grads = run_head(qa_kernels.qa_head, hidden, weight, b, start, end, None, upstream)
    ref, ref_grads = run_head(reference.qa_head, hidden, weight, b, start, end, None, upstream)
    tol = TOLERANCE["eager"][dtype]
    for x, y, name in zip([*out, grads[0]], [*ref, ref_grads[0]], ["start", "end", "loss", "dh"], strict=True):
        assert_close(x, y, tol, name)
        # The last batch row lies entirely beyond element 2^31: checked on its own, not drowned in the max.
        if x.dim() > 0:
            assert_close(x[-1], y[-1], tol, f"{name}[B-1]")
    for x, y, name in zip(grads[1:], ref_grads[1:], ["dw", "db"], strict=True):
        assert_close(x, y, TOLERANCE["eager_reduction"][dtype], name)


@pytest.mark.parametrize("labels", ["none", "mixed"])
def test_eager_calls_skip_the_op_dispatch_not_the_numbers(backend, device, labels, monkeypatch):
    """Eager calls on plain tensors call the implementation directly: under no_grad (serving,
    evaluation) as it is, with autograd through EagerQAHead (the op's own setup_context and
    backward). Bitwise the outputs and gradients of the registered op, which still runs when a
    function or dispatch mode watches (and for tensor subclasses, torch.compile, torch.func)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from qa_kernels.ops.qa_head import op as head_op

    B, S, H = 3, 7, 31
    hidden, weight, b = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels(labels, B, S, device)
    calls = []
    real_op = head_op.qa_head_fwd
    monkeypatch.setattr(head_op, "qa_head_fwd", lambda *args: calls.append(1) or real_op(*args))

    with torch.no_grad():
        fast = qa_kernels.qa_head(hidden, weight, b, start, end)
    assert calls == []

    class Passthrough(TorchFunctionMode):  # watches, changes nothing: the call takes the op
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    g_start, g_end, g_loss = torch.randn(B, S, device=device), torch.randn(B, S, device=device), torch.randn(())
    results = {}
    for how in ("autograd", "op"):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, b)]
        with Passthrough() if how == "op" else contextlib.nullcontext():
            out = qa_kernels.qa_head(*leaves, start, end)
        assert calls == ([1] if how == "op" else []), how
        node = type(out.start_logits.grad_fn).__name__
        expected = "EagerQAHeadBackward" if how == "autograd" else "GeneratedBackwardFor_qa_kernels_qa_head_fwd"
        assert node.startswith(expected), (how, node)
        value = (out.start_logits * g_start).sum() + (out.end_logits * g_end).sum()
        if out.loss is not None:
            value = value + out.loss * g_loss
        results[how] = (out, torch.autograd.grad(value, leaves))
    for x, y, z in zip(fast, results["autograd"][0], results["op"][0], strict=True):
        assert (x is None and y is None and z is None) or (torch.equal(x, y.detach()) and torch.equal(y, z))
    for name, x, y in zip(("hidden", "weight", "bias"), *(results[how][1] for how in ("autograd", "op")), strict=True):
        assert torch.equal(x, y), f"grad_{name}: the eager route and the op differ"

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    seen = []
    with torch.no_grad(), Record():
        qa_kernels.qa_head(hidden, weight, b, start, end)
    assert "qa_kernels.qa_head_fwd.default" in seen


@pytest.mark.parametrize("H", [96, 100], ids=["H96", "H100"])  # whole blocks of 32, and a tail
def test_bfloat16_nan_gradient_rows(backend, device, H):
    """A NaN upstream gradient on one token: that token's grad_hidden row is NaN (native's rounding:
    the bits of c10's float -> bfloat16 conversion, 0x7FC0, in its vector and tail code alike; torch's
    bf16 matmul writes other NaN bits); every other row is the reference's."""
    B, S = 3, 40
    hidden, weight, bias = make_inputs(B, S, H, torch.bfloat16, device)
    g_start, g_end = torch.randn(B, S, device=device), torch.randn(B, S, device=device)
    g_start[1, 5] = float("nan")

    def grad_hidden(fn):
        h = hidden.clone().requires_grad_()
        out = fn(h, weight, bias)
        ((out.start_logits.float() * g_start).sum() + (out.end_logits.float() * g_end).sum()).backward()
        return h.grad

    ours, ref = grad_hidden(qa_kernels.qa_head), grad_hidden(reference.qa_head)
    assert torch.isnan(ours[1, 5]).all() and torch.isnan(ref[1, 5]).all()
    if backend == "native" and torch.device(device).type == "cpu":
        assert (ours[1, 5].view(torch.int16) == 0x7FC0).all(), ours[1, 5].view(torch.int16).unique()
    rest = torch.ones(B, S, dtype=torch.bool, device=device)
    rest[1, 5] = False
    assert not torch.isnan(ours[rest]).any()
    assert_close(ours[rest], ref[rest], TOLERANCE["eager"][torch.bfloat16], "grad_hidden, the other rows")
