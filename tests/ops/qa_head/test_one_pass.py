"""The one-pass training path (ops/qa_head/op.py): when only the loss is differentiated, the forward
computes the weight's gradient and the backward only writes grad_hidden. Its gradients must equal
the two-pass path's (the same backend with the logits also receiving a gradient, of zeros) and the
reference, on every backend, and the path must be taken exactly when it applies."""

from __future__ import annotations

import pytest
import torch

import qa_kernels
from qa_kernels import backend as qa_backend
from qa_kernels import reference
from tests.ops.qa_head.test_qa_head import make_inputs, make_labels
from tests.utils import TOLERANCE, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Recipes with a loss: valid rows; clamped and ignored rows with a (B, 1) end; every row of both
# sides ignored (NaN loss, zero gradients); num_items_in_batch as an int and as a tensor.
LOSS_LABELS = ["valid", "mixed", "all_ignored", "mixed+num_items_int", "mixed+num_items_tensor"]
# S = 513 spans several of the kernels' row chunks (128 native, the Triton S blocks) with a tail.
SHAPES = [(3, 7, 31), (3, 513, 100), (2, 384, 1024)]
# One pass against two: the same math in a different fp32 summation order for grad_weight, then one
# rounding to the weight's dtype (which may land one unit in the last place apart).
PATHS_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# grad_bias of a loss is 0 in exact arithmetic: each path's is float32 rounding noise (the one pass
# takes sum_s p from the logsumexp's sum, the two-pass sums p - onehot), so it is bounded absolutely.
PATHS_ATOL = {"hidden": 1e-7, "weight": 1e-7, "bias": 1e-6}


@pytest.fixture
def bwd_calls(backend, device, monkeypatch):
    """The (needs_grad_hidden, needs_grad_weight, needs_grad_bias) of each call of the backend's
    backward, whichever way it is reached (the registered op, or the eager autograd route)."""
    calls = []
    impl = qa_backend.implementation("qa_head", torch.device(device).type)
    real = impl.qa_head_bwd

    def spy(*args):
        calls.append(tuple(args[-3:]))
        return real(*args)

    monkeypatch.setattr(impl, "qa_head_bwd", spy)
    return calls


def _grads(fn, hidden, weight, bias, start, end, num_items, g, *, two_pass=False, needs=(True, True, True)):
    """Gradients of ``loss * g`` (+ 0 * the logits, which forces the two-pass backward)."""
    leaves = [t.detach().clone().requires_grad_(n) for t, n in zip((hidden, weight, bias), needs, strict=True)]
    out = fn(*leaves, start, end, num_items_in_batch=num_items)
    value = out.loss * g
    if two_pass:
        value = value + (out.start_logits * 0).sum() + (out.end_logits * 0).sum()
    return torch.autograd.grad(value, [t for t in leaves if t.requires_grad])


@pytest.mark.parametrize("labels", LOSS_LABELS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_pass_equals_two_pass_and_reference(backend, device, dtype, shape, labels, bwd_calls):
    B, S, H = shape
    hidden, weight, bias = make_inputs(B, S, H, dtype, device)
    start, end, num_items = make_labels(labels, B, S, device)
    g = torch.randn((), device=device)
    args = (hidden, weight, bias, start, end, num_items, g)

    one = _grads(qa_kernels.qa_head, *args)
    # The loss-only backward reads no hidden (grad_weight) and no softmax (grad_bias): both came with
    # the forward; it only writes grad_hidden.
    assert bwd_calls == [(True, False, False)], "the loss-only backward must only write grad_hidden"
    two = _grads(qa_kernels.qa_head, *args, two_pass=True)
    assert bwd_calls[1:] == [(True, True, True)]
    eager = _grads(reference.qa_head, *args)
    f64 = (hidden.double(), weight.double(), bias.double())
    exact = _grads(reference.qa_head, *f64, start, end, num_items, g.double())

    for i, name in enumerate(("hidden", "weight", "bias")):
        # The two paths differ only in fp32 summation order (the weight's gradient: per-row
        # weighted sums against per-row-chunk partials of d_logits x hidden).
        tol = PATHS_TOL[dtype] if name != "hidden" else 0.0
        assert_close(one[i], two[i], tol, f"grad_{name}: one pass vs two", atol=PATHS_ATOL[name])
        assert one[i].dtype == two[i].dtype
        # grad_bias of a loss is 0 in exact arithmetic: rounding noise, bounded absolutely (eager's
        # half-precision reduction leaves up to ~1e-3 of it in bf16).
        atol = 1e-6 if name == "bias" else 0.0
        assert_close(one[i], exact[i], TOLERANCE["fp64"][dtype], f"grad_{name} vs fp64", atol=atol)
        tol = TOLERANCE["eager" if name == "hidden" else "eager_reduction"][dtype]
        eager_atol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}[dtype] if name == "bias" else 0.0
        assert_close(one[i], eager[i], tol, f"grad_{name} vs eager", atol=eager_atol)
    if labels == "all_ignored":  # NaN loss; eager's gradients are zeros, and ours
        assert all(torch.count_nonzero(x) == 0 for x in one)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_one_pass_with_float32_master_weight(backend, device, dtype, bwd_calls):
    B, S, H = 3, 513, 100
    hidden, weight, bias = make_inputs(B, S, H, dtype, device, weight_dtype=torch.float32)
    start, end, _ = make_labels("mixed", B, S, device)
    g = torch.tensor(0.75, device=device)
    one = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g)
    assert bwd_calls == [(True, False, False)]
    two = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g, two_pass=True)
    exact = _grads(reference.qa_head, hidden.double(), weight.double(), bias.double(), start, end, None, g.double())
    for i, name in enumerate(("hidden", "weight", "bias")):
        assert one[i].dtype == (hidden.dtype if name == "hidden" else torch.float32)
        assert_close(
            one[i], two[i], 1e-5 if name != "hidden" else 0.0, f"grad_{name}: one pass vs two", atol=PATHS_ATOL[name]
        )
        assert_close(one[i], exact[i], TOLERANCE["fp64"][dtype], f"grad_{name} vs fp64", atol=1e-6)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_one_pass_under_autocast(backend, device, autocast_dtype, bwd_calls):
    """fp32 activations and weights under autocast: the weighted sums use hidden rounded to the
    autocast dtype, as the logits (and eager's nn.Linear) do."""
    B, S, H = 3, 384, 100
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    g = torch.tensor(1.5, device=device)
    with torch.autocast(device, dtype=autocast_dtype):
        one = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g)
        assert bwd_calls == [(True, False, False)]
        two = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g, two_pass=True)
        eager = _grads(reference.qa_head, hidden, weight, bias, start, end, None, g)
    for i, name in enumerate(("hidden", "weight", "bias")):
        assert_close(
            one[i], two[i], 1e-5 if name != "hidden" else 0.0, f"grad_{name}: one pass vs two", atol=PATHS_ATOL[name]
        )
        # eager rounds d_logits and the products to the autocast dtype; ours keep them in fp32 (its
        # grad_bias, 0 in exact arithmetic, holds up to ~1e-3 of bf16 rounding noise)
        atol = 5e-3 if name == "bias" else 0.0
        assert_close(one[i], eager[i], TOLERANCE["eager_reduction"][autocast_dtype], f"grad_{name} vs eager", atol=atol)


@pytest.mark.parametrize("needs", ["weight", "weight+bias", "hidden+bias", "hidden"])
def test_frozen_parts(backend, device, needs, bwd_calls, monkeypatch):
    """Head-only training (hidden needs no gradient) runs no backward kernel at all; a frozen
    weight skips the forward's weighted sums (one_pass=False) and the backward reads no hidden."""
    fwd_flags = []
    impl = qa_backend.implementation("qa_head", torch.device(device).type)
    real_fwd = impl.qa_head_fwd
    monkeypatch.setattr(impl, "qa_head_fwd", lambda *args: fwd_flags.append(args[-1]) or real_fwd(*args))
    B, S, H = 3, 300, 64
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    g = torch.tensor(2.0, device=device)
    flags = tuple(name in needs for name in ("hidden", "weight", "bias"))
    one = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g, needs=flags)
    assert fwd_flags == [flags[1]]
    if flags[1] and not flags[0]:  # head-only: the forward's gradients, scaled; no kernel runs
        assert bwd_calls == []
    else:  # grad_bias from the forward when the weight trains (one pass), else from the backward
        assert bwd_calls == [(flags[0], False, flags[2] and not flags[1])]
    exact = _grads(reference.qa_head, hidden.double(), weight.double(), bias.double(), start, end, None,
                   g.double(), needs=flags)  # fmt: skip
    for x, y in zip(one, exact, strict=True):
        assert_close(x, y, TOLERANCE["fp64"][torch.float32], f"gradients for {needs}", atol=1e-6)


@pytest.mark.parametrize("upstream", ["logits_only", "loss_and_start_logits"])
def test_logit_gradients_fall_back_to_two_passes(backend, device, upstream, bwd_calls):
    """The forward cannot know whether the logits will receive gradients: it computes the weighted
    sums whenever the weight needs a gradient, and the backward ignores them when they would be wrong."""
    B, S, H = 3, 300, 64
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    gs = torch.randn(B, S, device=device)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        out = fn(*leaves, start, end)
        value = (out.start_logits * gs).sum()
        if upstream == "loss_and_start_logits":
            value = value + out.loss * 3.0
        return torch.autograd.grad(value, leaves)

    ours = grads(qa_kernels.qa_head)
    assert bwd_calls == [(True, True, True)]
    for name, x, y in zip(("hidden", "weight", "bias"), ours, grads(reference.qa_head), strict=True):
        assert_close(x, y, TOLERANCE["fp64"][torch.float32], f"grad_{name}", atol=1e-6)


def test_one_pass_gradients_are_bitwise_deterministic(backend, device):
    B, S, H = 3, 513, 1024
    hidden, weight, bias = make_inputs(B, S, H, torch.bfloat16, device)
    start, end, _ = make_labels("mixed", B, S, device)
    g = torch.tensor(1.0, device=device)
    first = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g)
    second = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def test_one_pass_with_extreme_logits(backend, device):
    """Logits in the hundreds (the online softmax's max grows row after row) and a row whose first
    positions are far below the rest: the rescaled sums must match the reference, never overflow."""
    B, S, H = 2, 300, 64
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    hidden = hidden * torch.linspace(0.1, 40.0, S, device=device).view(1, S, 1)  # logits up to ~|100|
    hidden[1, :150] -= 500.0 * weight[0].sign() / weight[0].abs().sum()  # start logits there ~ -500
    start, end = torch.tensor([10, 200], device=device), torch.tensor([299, 5], device=device)
    g = torch.tensor(1.0, device=device)
    one = _grads(qa_kernels.qa_head, hidden, weight, bias, start, end, None, g)
    exact = _grads(reference.qa_head, hidden.double(), weight.double(), bias.double(), start, end, None, g.double())
    for name, x, y in zip(("hidden", "weight", "bias"), one, exact, strict=True):
        assert x.isfinite().all(), f"grad_{name} not finite"
        assert_close(x, y, 1e-4, f"grad_{name}", atol=1e-5)


def test_one_pass_under_compile_fullgraph(backend, device, bwd_calls):
    torch._dynamo.reset()

    def step(h, w, b, s, e):
        return qa_kernels.qa_head(h, w, b, s, e).loss * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    B, S, H = 3, 7, 31
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = make_labels("mixed", B, S, device)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    grads = torch.autograd.grad(compiled(*leaves, start, end), leaves)
    assert bwd_calls and all(call == (True, False, False) for call in bwd_calls)
    ref = _grads(reference.qa_head, hidden.double(), weight.double(), bias.double(), start, end, None, 2.0)
    for name, x, y in zip(("hidden", "weight", "bias"), grads, ref, strict=True):
        assert_close(x, y, TOLERANCE["fp64"][torch.float32], f"grad_{name}", atol=1e-6)


@pytest.mark.parametrize("labels", ["mixed", "start_all_ignored", "mixed+num_items_int", "plus_inf"])
def test_grad_bias_loss_is_the_statement(backend, device, labels):
    """The forward's grad_bias_loss (2,) on every backend against torch_impl.grad_bias_loss on the
    backend's own logits, lse and scale: rounding noise around 0 (bounded absolutely), exactly 0 for
    a side with no valid row, NaN on the side whose valid row holds a +inf logit (eager's too), and
    empty without one_pass."""
    from qa_kernels.ops.qa_head import torch_impl

    B, S, H = 5, 300, 64
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, num_items = make_labels(labels.replace("start_all_ignored", "mixed").replace("plus_inf", "mixed"), B, S,
                                        device)  # fmt: skip
    end = end.reshape(B)
    if labels == "start_all_ignored":
        start = torch.full((B,), S, device=device)
    if labels == "plus_inf":  # row 2 is valid on the start side (S // 2), ignored on the end side
        weight = weight.abs() * torch.tensor([[1.0], [-1.0]], device=device)
        hidden = hidden.clone()
        hidden[2, 7] = float("inf")  # start logit +inf, end logit -inf
    impl = qa_backend.implementation("qa_head", torch.device(device).type)
    value = num_items if isinstance(num_items, int) else None
    out = impl.qa_head_fwd(hidden, weight, bias, start, end, None, value, None, True)
    start_logits, end_logits, _, lse, scale, _, gbl = out
    assert gbl.shape == (2,) and gbl.dtype == torch.float32
    expected = torch_impl.grad_bias_loss(start_logits, end_logits, lse, scale, start, end)
    assert_close(gbl, expected, 0.0, "grad_bias_loss vs the statement", atol=1e-6)
    if labels == "start_all_ignored":
        assert gbl[0] == 0 and gbl[1].isfinite()
    elif labels == "plus_inf":
        assert gbl[0].isnan() and gbl[1].isfinite()
    else:
        assert gbl.isfinite().all() and gbl.abs().max() <= 1e-6
    plain = impl.qa_head_fwd(hidden, weight, bias, start, end, None, value, None, False)
    assert plain[6].shape == (0,)
