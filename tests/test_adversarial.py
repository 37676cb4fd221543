"""qa_head used as an adversary would: a seeded differential fuzz of every backend against the
float64 reference, threads, torch.func transforms and forward-mode AD, tensor wrappers and
subclasses, and the inputs eager accepts where a drop-in op most easily differs from it.

Sizes stay small: the Triton backend runs under the interpreter on CPU, whose cost is per program.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import qa_kernels
from qa_kernels import backend as qa_backend
from qa_kernels import reference
from tests.utils import TOLERANCE, assert_close, in_threads, skip_threads_under_the_interpreter

FUZZ_CASES = 48
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# A differential fuzz against the float64 reference.


def _hidden(rng: np.random.Generator, B: int, S: int, H: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(B, S, H) in one of the layouts a caller can hand over: contiguous, (B, H, S) storage seen
    transposed, every other feature of a wider tensor, a window of a longer sequence, one sequence
    broadcast over the batch."""
    layout = rng.choice(["contiguous", "transposed", "sliced_h", "sliced_s", "expanded"])
    if layout == "transposed":
        return torch.randn(B, H, S, device=device).to(dtype).transpose(1, 2)
    if layout == "sliced_h":
        return torch.randn(B, S, 2 * H, device=device).to(dtype)[:, :, ::2]
    if layout == "sliced_s":
        return torch.randn(B, S + 3, H, device=device).to(dtype)[:, 1 : S + 1]
    if layout == "expanded":
        return torch.randn(1, S, H, device=device).to(dtype).expand(B, S, H)
    return torch.randn(B, S, H, device=device).to(dtype)


def _positions(rng: np.random.Generator, regime: str, B: int, S: int, device: str) -> torch.Tensor:
    """(B,) or (B, 1) token indices in int64, int32 or uint8 (uint8 only where they fit)."""
    if regime == "valid":
        values = rng.integers(0, S, B)
    elif regime == "ignored":
        values = rng.integers(S, S + 300, B)
    else:  # "mixed": negative (-> token 0), >= S (ignored) and in range
        values = rng.choice([-7, -1, 0, S - 1, S, S + 5, *rng.integers(0, S, 4).tolist()], B)
    fits_uint8 = values.size == 0 or (values.min() >= 0 and values.max() < 256)
    dtypes = [torch.int64, torch.int32] + ([torch.uint8] if fits_uint8 else [])
    positions = torch.tensor(values, dtype=dtypes[rng.integers(len(dtypes))], device=device)
    return positions.reshape(B, 1) if rng.random() < 0.3 else positions


def _fuzz_case(seed: int, device: str) -> dict:
    rng = np.random.default_rng(seed)
    dtype = DTYPES[rng.integers(3)]
    B = int(rng.choice([0, 1, 2, 3, 5], p=[0.1, 0.25, 0.25, 0.25, 0.15]))
    S = int(rng.choice([1, 2, 7, 16, 33, 64, 130]))
    H = int(rng.choice([1, 3, 16, 31, 64, 100, 129]))
    hidden = _hidden(rng, B, S, H, dtype, device)
    weight_dtype = torch.float32 if dtype != torch.float32 and rng.random() < 0.3 else dtype  # master weights
    weight = (torch.randn(2, H, device=device) * 0.3).to(weight_dtype)
    if rng.random() < 0.3:  # (H, 2) storage: a transposed or tied weight
        weight = weight.t().contiguous().t()
    bias = (torch.randn(2, device=device) * 0.2).to(weight_dtype) if rng.random() < 0.7 else None
    label_kind = rng.choice(["none", "start_only", "both", "both", "both"])
    start = end = None
    if label_kind != "none":
        start = _positions(rng, rng.choice(["valid", "mixed", "ignored"], p=[0.4, 0.45, 0.15]), B, S, device)
        if label_kind == "both":
            end = _positions(rng, rng.choice(["valid", "mixed", "ignored"], p=[0.4, 0.45, 0.15]), B, S, device)
    num_items = None  # or an int, a float, numpy numbers, an int and a float tensor
    if end is not None and rng.random() < 0.4:
        kinds = [3, 2.5, np.int64(4), np.float32(1.5), torch.tensor(6, device=device), torch.tensor(2.0, device=device)]
        num_items = kinds[rng.integers(len(kinds))]
    wants = [bool(rng.random() < p) for p in (0.8, 0.6, 0.5)]  # requires_grad of hidden, weight, bias
    upstream = rng.choice(["all", "loss", "logits", "start"])
    return dict(hidden=hidden, weight=weight, bias=bias, start=start, end=end, num_items=num_items,
                wants=wants, upstream=upstream, dtype=dtype)  # fmt: skip


def _run(fn, case: dict, dtype=None):
    """Forward + backward of ``fn`` on the case's inputs (as float64 copies when ``dtype``), against
    the case's upstream gradients (seeded, so both runs draw the same ones)."""
    leaves, names, inputs = [], [], []
    for name, t, wants in zip(("hidden", "weight", "bias"), (case["hidden"], case["weight"], case["bias"]),
                              case["wants"], strict=True):  # fmt: skip
        if t is not None:
            t = t.detach().to(dtype) if dtype is not None else t.detach()  # strides kept (a new leaf)
            if wants:
                leaves.append(t.requires_grad_())
                names.append(f"grad_{name}")
        inputs.append(t)
    out = fn(*inputs, case["start"], case["end"], num_items_in_batch=case["num_items"])
    if not leaves:
        return out, {}
    generator = torch.Generator().manual_seed(1234)
    B, S = out.start_logits.shape
    g_start, g_end = (torch.randn(B, S, generator=generator).to(out.start_logits.device) for _ in range(2))
    kind = case["upstream"] if out.loss is not None else "logits"
    objective = out.start_logits.double().sum() * 0  # keeps the graph when a term is left out
    if kind in ("all", "logits", "start"):
        objective = objective + (out.start_logits.double() * g_start.double()).sum()
    if kind in ("all", "logits"):
        objective = objective + (out.end_logits.double() * g_end.double()).sum()
    if kind in ("all", "loss"):
        objective = objective + out.loss.double() * 1.7
    return out, dict(zip(names, torch.autograd.grad(objective, leaves), strict=True))


@pytest.mark.parametrize("seed", range(FUZZ_CASES))
def test_fuzz_against_float64(backend, device, seed):
    """Random shapes (B = 0 included), strides, dtypes, master weights, bias or none, label regimes
    and dtypes, num_items_in_batch kinds, requires_grad subsets and upstream subsets: the outputs and
    every gradient equal the float64 reference within the dtype's tolerance, NaN exactly where it
    has NaN (a side with every row ignored)."""
    case = _fuzz_case(seed, device)
    out, grads = _run(qa_kernels.qa_head, case)
    exact, exact_grads = _run(reference.qa_head, case, dtype=torch.float64)
    tol = TOLERANCE["fp64"][case["dtype"]]
    out_dtype = case["dtype"]
    assert out.start_logits.dtype == out.end_logits.dtype == out_dtype
    assert_close(out.start_logits, exact.start_logits, tol, "start_logits")
    assert_close(out.end_logits, exact.end_logits, tol, "end_logits")
    assert (out.loss is None) == (exact.loss is None)
    if out.loss is not None:
        assert out.loss.dtype == torch.float32
        assert_close(out.loss, exact.loss, tol, "loss")
    assert grads.keys() == exact_grads.keys()
    for name, g in grads.items():
        assert g.dtype == case[name.removeprefix("grad_")].dtype, f"{name}: dtype {g.dtype}"
        # A zero-in-exact-arithmetic gradient (the bias under a loss-only objective) holds only
        # rounding noise: bounded absolutely, at the dtype's tolerance.
        assert_close(g, exact_grads[name], tol, name, atol=tol)


# ------------------------------------------------------------------------------------------------
# Forward-mode AD and torch.func: never a dropped tangent or batch dimension.


def _small(device, dtype=torch.float32):
    B, S, H = 3, 7, 16
    hidden = torch.randn(B, S, H, device=device, dtype=dtype)
    weight = (torch.randn(2, H, device=device) * 0.3).to(dtype)
    bias = (torch.randn(2, device=device) * 0.1).to(dtype)
    start = torch.tensor([1, -2, 9], device=device)  # in range, clamped to 0, ignored
    end = torch.tensor([[4], [6], [0]], device=device)
    return hidden, weight, bias, start, end


def test_forward_ad_dual_tensors(backend, device):
    """torch.autograd.forward_ad: the tangents of both logits and the loss equal the reference's,
    for tangents on hidden, weight and bias together."""
    hidden, weight, bias, start, end = _small(device)
    tangents = [torch.randn_like(t) for t in (hidden, weight, bias)]
    results = []
    for fn in (qa_kernels.qa_head, reference.qa_head):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, dt) for t, dt in zip((hidden, weight, bias), tangents, strict=True)]
            out = fn(*duals, start, end)
            results.append([fwAD.unpack_dual(t) for t in (out.start_logits, out.end_logits, out.loss)])
    for (got_p, got_t), (want_p, want_t), name in zip(*results, ["start", "end", "loss"], strict=True):
        assert got_t is not None, f"{name}: tangent dropped"
        assert_close(got_p, want_p, 2e-5, f"{name} primal")
        assert_close(got_t, want_t, 2e-5, f"{name} tangent")


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "jacrev", "grad", "hessian"])
def test_torch_func_transforms(backend, device, transform):
    """Each transform of qa_head equals the same transform of the reference."""
    hidden, weight, bias, start, end = _small(device)
    hidden = hidden[:, :5, :6].contiguous()  # Jacobians and Hessians grow with the input's size
    weight = weight[:, :6].contiguous()

    def loss_of(fn):
        return lambda h, w: fn(h, w, bias, start, end).loss

    def logits_of(fn):
        return lambda h, w: fn(h, w, bias, start, end).start_logits

    results = []
    for fn in (qa_kernels.qa_head, reference.qa_head):
        if transform == "jvp":
            tangents = (torch.ones_like(hidden), torch.full_like(weight, 0.5))
            primal, tangent = torch.func.jvp(loss_of(fn), (hidden, weight), tangents)
            _, logit_tangent = torch.func.jvp(logits_of(fn), (hidden, weight), tangents)
            results.append([primal, tangent, logit_tangent])
        elif transform == "jacfwd":
            results.append(list(torch.func.jacfwd(logits_of(fn), argnums=(0, 1))(hidden, weight)))
        elif transform == "jacrev":
            results.append(list(torch.func.jacrev(loss_of(fn), argnums=(0, 1))(hidden, weight)))
        elif transform == "grad":
            results.append(list(torch.func.grad(loss_of(fn), argnums=(0, 1))(hidden, weight)))
        else:
            results.append([torch.func.hessian(loss_of(fn), argnums=1)(hidden, weight)])
    for got, want in zip(*results, strict=True):
        assert_close(got, want, 2e-5, f"{transform}", atol=1e-7)


@pytest.mark.parametrize("ends", ["mixed", "all_ignored"])
def test_double_backward(backend, device, ends):
    """create_graph=True, then the gradient of a penalty on the gradients (a gradient penalty, a
    Hessian-vector product): eager's second derivatives for hidden, weight and bias, finite also
    when every end is ignored (an infinite scale once leaked 0 * inf = NaN into them)."""
    hidden, weight, bias, start, end = _small(device)
    if ends == "all_ignored":
        end = torch.tensor([7, 9, 100], device=device)
    g = torch.randn(3, 7, device=device)
    results = []
    for fn in (qa_kernels.qa_head, reference.qa_head):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        out = fn(*leaves, start, end)
        first = torch.autograd.grad(out.loss + (out.start_logits * g).sum(), leaves, create_graph=True)
        penalty = first[0].square().sum() + 0.7 * first[1].square().sum() + 0.3 * first[2].sum()
        results.append(torch.autograd.grad(penalty, leaves))
    # The bias's second derivative is 0 in exact arithmetic (each row's softmax - onehot sums to 0):
    # rounding noise, bounded by 1e-6 of the largest second derivative.
    largest = max(t.abs().max().item() for t in results[1])
    for got, want, name in zip(*results, ["hidden", "weight", "bias"], strict=True):
        assert got.isfinite().all(), f"second derivative for {name}: not finite"
        assert_close(got, want, 2e-5, f"second derivative for {name}", atol=1e-6 * largest)


@pytest.mark.parametrize("over", ["hidden", "positions", "weight"])
def test_vmap(backend, device, over):
    """vmap over a leading dimension of hidden, of the positions, or of the weight: each slice equals
    its own qa_head call (the batch dimension is neither dropped nor mixed into the loss)."""
    hidden, weight, bias, start, end = _small(device)
    n = 4
    if over == "hidden":
        stacked, in_dims = torch.randn(n, *hidden.shape, device=device), (0, None, None, None)
        call = lambda h, w, s, e: qa_kernels.qa_head(h, w, bias, s, e).loss
        args = (stacked, weight, start, end)
    elif over == "positions":
        starts = torch.randint(-2, 9, (n, 3), device=device)
        stacked, in_dims = starts, (None, None, 0, None)
        call = lambda h, w, s, e: qa_kernels.qa_head(h, w, bias, s, e).loss
        args = (hidden, weight, starts, end)
    else:
        stacked, in_dims = torch.randn(n, *weight.shape, device=device) * 0.3, (None, 0, None, None)
        call = lambda h, w, s, e: qa_kernels.qa_head(h, w, bias, s, e).loss
        args = (hidden, stacked, start, end)
    batched = torch.func.vmap(call, in_dims=in_dims)(*args)
    assert batched.shape == (n,)
    for i in range(n):
        one = [a[i] if d == 0 else a for a, d in zip(args, in_dims, strict=True)]
        want = reference.qa_head(one[0], one[1], bias, one[2], one[3]).loss
        assert_close(batched[i], want, 2e-5, f"slice {i}")


def test_fake_and_meta_tensors(backend, device):
    """FakeTensorMode and meta tensors (with and without grad) give outputs of the right shapes and
    dtypes, without running a kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    hidden, weight, bias, start, end = _small("meta", torch.bfloat16)
    out = qa_kernels.qa_head(hidden, weight, bias, start, end)
    assert out.start_logits.device.type == "meta" and out.start_logits.shape == (3, 7)
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and out.start_logits.dtype == torch.bfloat16
    grad_out = qa_kernels.qa_head(hidden.requires_grad_(), weight, bias, start, end)
    assert grad_out.end_logits.shape == (3, 7) and grad_out.loss.requires_grad
    with FakeTensorMode():
        hidden, weight, bias, start, end = _small(device)
        out = qa_kernels.qa_head(hidden, weight, bias, start, end)
        assert out.start_logits.shape == (3, 7) and out.loss.shape == ()


_LOGGED_CALLS: list[str] = []


class _Logged(torch.Tensor):
    """A __torch_function__ subclass: every call goes through it, as a tracing or logging library's
    tensors do."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        _LOGGED_CALLS.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_tensor_subclass_and_parameters(backend, device):
    """A __torch_function__ subclass and nn.Parameter inputs (with and without autograd) give the
    reference's numbers."""
    hidden, weight, bias, start, end = _small(device)
    ref = reference.qa_head(hidden, weight, bias, start, end)
    _LOGGED_CALLS.clear()
    out = qa_kernels.qa_head(hidden.as_subclass(_Logged), weight, bias, start, end)
    assert _LOGGED_CALLS, "the subclass saw no call"
    for got, want, name in zip(out, ref, ["start", "end", "loss"], strict=True):
        assert_close(got.as_subclass(torch.Tensor), want, 2e-5, name)
    w, b = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())
    with torch.no_grad():
        out = qa_kernels.qa_head(hidden, w, b, start, end)
    assert_close(out.loss, ref.loss, 2e-5, "loss with Parameters under no_grad")
    loss = qa_kernels.qa_head(hidden, w, b, start, end).loss
    (gw,) = torch.autograd.grad(loss, [w])
    w_ref = weight.clone().requires_grad_()
    (gw_ref,) = torch.autograd.grad(reference.qa_head(hidden, w_ref, bias, start, end).loss, [w_ref])
    assert_close(gw, gw_ref, 2e-5, "grad_weight of a Parameter")


def test_sparse_and_dtensor_inputs_are_refused_by_name(backend, device):
    hidden, weight, bias, start, end = _small(device)
    with pytest.raises(TypeError, match=r"hidden must be a dense \(strided\) tensor; got layout torch.sparse_coo"):
        qa_kernels.qa_head(hidden.to_sparse(), weight, bias, start, end)
    with pytest.raises(TypeError, match=r"weight must be a dense \(strided\) tensor; got layout torch.sparse_csr"):
        qa_kernels.qa_head(hidden, weight.to_sparse_csr(), bias, start, end)
    with pytest.raises(TypeError, match="start_logits must be a dense"):
        qa_kernels.decode_spans(hidden[..., 0].to_sparse(), hidden[..., 1])
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = DeviceMesh(device, [0])
        sharded = distribute_tensor(hidden, mesh, [Shard(0)])
        with pytest.raises(TypeError, match="hidden is a DTensor: qa_head has no sharding rule"):
            qa_kernels.qa_head(sharded, distribute_tensor(weight, mesh, [Replicate()]), bias, start, end)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Threads.


def test_use_backend_is_per_thread(device):
    """Two threads in their own use_backend blocks, interleaved at a barrier, each see (and run) their
    own backend; a fresh thread sees the process-wide choice; the main thread's is left alone."""
    names = ["torch", "native" if qa_backend.native_available() else "torch"]
    before = qa_kernels.get_backend()
    seen = {}
    inside = threading.Barrier(2)

    def work(i):
        with qa_kernels.use_backend(names[i]):
            inside.wait()  # both blocks are open now
            seen[i] = (qa_kernels.get_backend(), qa_backend.resolve("qa_head", device))
            inside.wait()
        seen[i] += (qa_kernels.get_backend(),)

    with qa_kernels.use_backend("torch"):
        in_threads(2, work)
        assert qa_kernels.get_backend() == "torch"
    assert qa_kernels.get_backend() == before
    for i in range(2):
        assert seen[i] == (names[i], names[i], before), seen
    qa_kernels.set_backend("torch")
    try:
        seen_fresh = []
        in_threads(1, lambda i: seen_fresh.append(qa_kernels.get_backend()))
        assert seen_fresh == ["torch"]
        with qa_kernels.use_backend("auto"):  # a block still wins over the process-wide choice
            assert qa_kernels.get_backend() == "auto"
    finally:
        qa_kernels.set_backend(None)


def test_backward_runs_on_the_forwards_backend(device, monkeypatch):
    """The forward inside use_backend("torch"), the backward outside the block (as autograd's device
    threads always are): the torch implementation serves both."""
    from qa_kernels.ops.qa_head import torch_impl

    calls = []
    real = torch_impl.qa_head_bwd
    monkeypatch.setattr(torch_impl, "qa_head_bwd", lambda *a: calls.append(1) or real(*a))
    hidden, weight, bias, start, end = _small(device)
    hidden.requires_grad_()
    with qa_kernels.use_backend("torch"):
        loss = qa_kernels.qa_head(hidden, weight, bias, start, end).loss
    with qa_kernels.use_backend("native" if qa_backend.native_available() else "torch"):
        loss.backward()
    assert calls == [1]


def test_qa_head_from_many_threads(backend, device):
    """Plain concurrent calls (forward and backward, different inputs per thread) give each thread
    its own reference numbers."""
    skip_threads_under_the_interpreter(backend)

    def work(i):
        torch.manual_seed(i)
        for _ in range(5):
            hidden, weight, bias, start, end = _small(device)
            h = hidden.requires_grad_()
            out = qa_kernels.qa_head(h, weight, bias, start, end)
            (g,) = torch.autograd.grad(out.loss, [h])
            h_ref = hidden.detach().clone().requires_grad_()
            ref = reference.qa_head(h_ref, weight, bias, start, end)
            (g_ref,) = torch.autograd.grad(ref.loss, [h_ref])
            assert_close(out.loss, ref.loss, 2e-5, f"thread {i} loss")
            assert_close(g, g_ref, 2e-5, f"thread {i} grad_hidden")

    def in_block(i):  # a thread starts outside every use_backend block: open the fixture's again
        with qa_kernels.use_backend(backend):
            work(i)

    in_threads(4, in_block)


# ------------------------------------------------------------------------------------------------
# Inputs eager accepts, where this library once answered differently.


def test_plus_inf_logit_gives_nan_as_eager(backend, device):
    """A +inf logit away from the target (an fp16 overflow, say): eager's log-softmax gives NaN (inf -
    inf), not +inf; so does every backend, loss and gradients alike."""
    B, S, H = 2, 9, 8
    hidden = torch.randn(B, S, H, device=device)
    hidden[0, 4] = float("inf")  # token 4 of row 0: a +inf logit on both sides (positive weight)
    weight = torch.rand(2, H, device=device) + 0.1
    start, end = torch.tensor([1, 2], device=device), torch.tensor([3, 5], device=device)
    h, h_ref = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    out = qa_kernels.qa_head(h, weight, None, start, end)
    ref = reference.qa_head(h_ref, weight, None, start, end)
    assert ref.loss.isnan() and out.loss.isnan(), f"loss {out.loss} (eager {ref.loss})"
    (g,) = torch.autograd.grad(out.loss, [h])
    (g_ref,) = torch.autograd.grad(ref.loss, [h_ref])
    assert torch.equal(g[0].isnan(), g_ref[0].isnan()), "row 0: NaN gradients where eager has them"


def test_num_items_zero_with_logits_only_backward(backend, device):
    """num_items_in_batch = 0 with labels, only the logits backpropagated: eager never touches the
    loss's (infinite) scale, so its gradients are finite; so are ours, and equal."""
    hidden, weight, bias, start, end = _small(device)
    g = torch.randn(3, 7, device=device)
    grads = []
    for fn in (qa_kernels.qa_head, reference.qa_head):
        h = hidden.clone().requires_grad_()
        out = fn(h, weight, bias, start, end, num_items_in_batch=0)
        grads.append(torch.autograd.grad((out.start_logits * g).sum(), [h])[0])
    assert grads[0].isfinite().all()
    assert_close(grads[0], grads[1], 2e-5, "grad_hidden")


@pytest.mark.parametrize("batch", [2, 3, 1])
def test_compile_dynamic_fullgraph(backend, device, batch):
    """dynamic=True makes B symbolic; the argument checks compare sizes one by one (a tuple check
    once refused shape (2,) for 'must have shape (2,)')."""
    torch._dynamo.reset()
    hidden, weight, bias, _, _ = _small(device)
    hidden = hidden[:1].expand(batch, -1, -1).contiguous()
    start, end = torch.arange(batch, device=device), torch.arange(batch, device=device).reshape(batch, 1) + 1

    def f(h, w, b, s, e):
        return qa_kernels.qa_head(h, w, b, s, e).loss

    compiled = torch.compile(f, dynamic=True, fullgraph=True, backend="aot_eager")
    assert_close(compiled(hidden, weight, bias, start, end), f(hidden, weight, bias, start, end), 2e-5, "loss")


def test_position_buffers_may_be_refilled_before_backward(backend, device):
    """A training loop that refills one label buffer per step: the backward uses the positions of
    its forward (eager keeps no reference to them either)."""
    hidden, weight, bias, start, end = _small(device)
    buffer_start, buffer_end = start.clone(), end.clone()
    h = hidden.clone().requires_grad_()
    loss = qa_kernels.qa_head(h, weight, bias, buffer_start, buffer_end).loss
    buffer_start.fill_(0)
    buffer_end.fill_(1)
    (g,) = torch.autograd.grad(loss, [h])
    h_ref = hidden.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(reference.qa_head(h_ref, weight, bias, start, end).loss, [h_ref])
    assert_close(g, g_ref, 2e-5, "grad_hidden")


@pytest.mark.parametrize("weight_grad", [True, False])
def test_saves_hidden_only_for_the_weight_gradient(backend, device, weight_grad):
    """hidden (the one large tensor) is kept for the backward only when the weight's gradient needs
    it, as eager's nn.Linear does."""
    hidden, weight, bias, start, end = _small(device)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_(weight_grad)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = qa_kernels.qa_head(h, w, bias, start, end)
    assert any(t.shape == hidden.shape and t.stride() == h.stride() for t in saved) == weight_grad
    grads = torch.autograd.grad(out.loss + out.start_logits.square().sum(), [h, w] if weight_grad else [h])
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_(weight_grad)
    ref = reference.qa_head(h_ref, w_ref, bias, start, end)
    ref_grads = torch.autograd.grad(
        ref.loss + ref.start_logits.square().sum(), [h_ref, w_ref] if weight_grad else [h_ref]
    )
    for got, want in zip(grads, ref_grads, strict=True):
        assert_close(got, want, 2e-5, "gradient")


def test_uint8_positions_and_numpy_num_items(backend, device):
    """Eager's cross-entropy takes uint8 targets and divides by a numpy number: so does qa_head. Other
    small integer dtypes, which eager refuses, are refused by name."""
    hidden, weight, bias, _, _ = _small(device)
    start, end = torch.tensor([1, 0, 9], device=device), torch.tensor([4, 6, 255], device=device)
    want = reference.qa_head(hidden, weight, bias, start, end, num_items_in_batch=4).loss
    got = qa_kernels.qa_head(hidden, weight, bias, start.to(torch.uint8), end.to(torch.uint8), num_items_in_batch=4)
    assert_close(got.loss, want, 2e-5, "uint8 positions")
    for number in (np.int64(4), np.int32(4), np.float64(4.0), np.float32(4.0)):
        got = qa_kernels.qa_head(hidden, weight, bias, start, end, num_items_in_batch=number).loss
        assert_close(got, want, 2e-5, f"num_items_in_batch={type(number).__name__}")
    as_float64 = torch.tensor(4.0, dtype=torch.float64, device=device)  # eager's division promotes the loss
    got = qa_kernels.qa_head(hidden, weight, bias, start, end, num_items_in_batch=as_float64).loss
    want64 = reference.qa_head(hidden, weight, bias, start, end, num_items_in_batch=as_float64).loss
    assert got.dtype == want64.dtype == torch.float64
    assert_close(got, want64, 2e-5, "float64 num_items_in_batch")
    for dtype in (torch.int8, torch.int16):
        with pytest.raises(TypeError, match=rf"start_positions must be an integer tensor .*{dtype}"):
            qa_kernels.qa_head(hidden, weight, bias, start.to(dtype), end)
    with pytest.raises(TypeError, match=r"num_items_in_batch must be a real number.*got bool_?$"):
        qa_kernels.qa_head(hidden, weight, bias, start, end, num_items_in_batch=np.bool_(True))


def test_refusals_name_what_they_refuse(monkeypatch):
    start, end = torch.randn(2, 8), torch.randn(2, 8)
    for top_k in (2**63, 2**40, 65536):
        with pytest.raises(ValueError, match=rf"top_k must be <= 65535: .*got top_k = {top_k}"):
            qa_kernels.decode_spans(start, end, top_k=top_k)
    wide = qa_kernels.decode_spans(start, end, top_k=np.int64(65535), max_answer_len=np.int32(3))
    assert wide.starts.shape == (2, 65535) and (wide.starts[:, 8 * 3 :] == -1).all()
    monkeypatch.setenv("QA_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"the environment variable QA_KERNELS_BACKEND must be one of .*'bogus'"):
        qa_kernels.qa_head(torch.randn(1, 3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"backend must be one of .*got 3"):
        qa_kernels.set_backend(3)


@pytest.mark.parametrize("how", ["reentrant", "non_reentrant", "anomaly", "retain_graph_twice"])
def test_activation_checkpointing_and_autograd_modes(backend, device, how):
    """Activation checkpointing (the forward recomputed in the backward), anomaly detection and a
    retained graph backpropagated twice give the reference's gradients."""
    from torch.utils.checkpoint import checkpoint

    hidden, weight, bias, start, end = _small(device)
    g = torch.tensor(1.7, device=device)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]

        def loss_of(h):
            return fn(h, leaves[1], leaves[2], start, end).loss * g

        if how in ("reentrant", "non_reentrant"):
            checkpoint(loss_of, leaves[0], use_reentrant=how == "reentrant").backward()
        elif how == "anomaly":
            with torch.autograd.set_detect_anomaly(True):
                loss_of(leaves[0]).backward()
        else:
            loss = loss_of(leaves[0])
            loss.backward(retain_graph=True)
            loss.backward()
        return [t.grad for t in leaves]

    for name, x, y in zip(
        ("hidden", "weight", "bias"), grads(qa_kernels.qa_head), grads(reference.qa_head), strict=True
    ):
        # grad_bias of a loss is 0 in exact arithmetic: rounding noise, bounded absolutely.
        assert_close(x, y, 2e-5, f"grad_{name} ({how})", atol=1e-6 if name == "bias" else 1e-7)
