"""The Triton one-pass forward's grad_weight_loss (triton_impl.qa_head_fwd with one_pass=True) against
its plain statement, torch_impl.grad_weight_loss, called on the kernels' own logits, lse and scale:
the logits kernel's per-block partials (block max, exp-weighted sums of hidden's rows) and the combine
kernel's rescaling, target rows and scale, isolated from the logits' own rounding. The op-level
one-pass vs two-pass gradients, on every backend, are tests/ops/qa_head/test_one_pass.py's.

Runs on a GPU, or on CPU tensors under TRITON_INTERPRET=1; skipped otherwise. Under the interpreter
the kernels take huge blocks (one S block for S <= 256); ``small_blocks`` shrinks them, so that rows
span several S blocks (a partial last one) and H several H blocks, at a few dozen programs.
"""

from __future__ import annotations

import pytest
import torch

from qa_kernels import backend as qa_backend
from tests.ops.qa_head.test_qa_head import make_inputs, make_labels
from tests.utils import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_REASON = qa_backend.unavailable("qa_head", "triton", DEVICE)
if _REASON is not None:
    pytest.skip(f"the Triton kernels cannot run here: {_REASON}", allow_module_level=True)

from qa_kernels.ops.qa_head import torch_impl  # noqa: E402
from qa_kernels.ops.qa_head import triton_impl as tk  # noqa: E402

# Max |ours - statement| / max |statement| (tests.utils.assert_close). Both sum the same fp32
# products in different orders (per block then per row here; one einsum there): 1e-5 covers that.
# Autocast to bf16 under the interpreter: its fp32 -> bf16 casts truncate where torch rounds to
# nearest, so hidden's rounded rows differ by up to one bf16 unit (2^-8): 8e-3, two units.
TOL = 1e-5
TOL_INTERPRETER_BF16_CAST = 8e-3

# (hidden dtype, weight dtype, autocast dtype) : the rounding cases of the mm dtype
DTYPE_CASES = {
    "fp32": (torch.float32, torch.float32, None),
    "fp16": (torch.float16, torch.float16, None),
    "bf16": (torch.bfloat16, torch.bfloat16, None),
    "fp16_fp32_master": (torch.float16, torch.float32, None),
    "bf16_fp32_master": (torch.bfloat16, torch.float32, None),
    "autocast_bf16": (torch.float32, torch.float32, torch.bfloat16),
    "autocast_fp16": (torch.float32, torch.float32, torch.float16),
}


@pytest.fixture
def small_blocks(monkeypatch):
    """16-token, 32-feature blocks in the token kernels (interpreter and GPU tables alike), and a
    combine kernel stepping over 8 partial rows and 32 columns at a time."""
    monkeypatch.setattr(tk, "_INTERPRETER_TOKEN_BLOCKS", (16, 32, 1))
    monkeypatch.setattr(tk, "_GPU_FWD_ONE_PASS_BLOCKS", (16, 32, 4))
    monkeypatch.setattr(tk, "_INTERPRETER_COMBINE_BLOCKS", (8, 32, 1))
    monkeypatch.setattr(tk, "_GPU_COMBINE_BLOCKS", (8, 32, 4))


def _tolerance(cast_dtype):
    if cast_dtype == torch.bfloat16 and DEVICE == "cpu":
        return TOL_INTERPRETER_BF16_CAST
    return TOL


def _labels(kind, B, S, device):
    """make_labels' recipe as the op receives it: (B,) positions (the API reshapes a (B, 1) end)."""
    start, end, num_items = make_labels(kind, B, S, device)
    return start, end.reshape(B), num_items


def _fwd(hidden, weight, bias, start, end, num_items=None, num_items_value=None, cast_dtype=None):
    return tk.qa_head_fwd(hidden, weight, bias, start, end, num_items, num_items_value, cast_dtype, True)


def _statement(hidden, weight, cast_dtype, out, start, end):
    """torch_impl.grad_weight_loss on the kernels' stored logits, lse and scale."""
    s_logits, e_logits, _, lse, scale, *_ = out
    return torch_impl.grad_weight_loss(hidden, weight, cast_dtype, s_logits, e_logits, lse, scale, start, end)


def _check(out, hidden, weight, cast_dtype, start, end, tol, name):
    gwl = out[5]
    assert gwl.shape == (2, weight.shape[1]) and gwl.dtype == torch.float32 and gwl.is_contiguous(), name
    assert_close(gwl, _statement(hidden, weight, cast_dtype, out, start, end), tol, name)
    return gwl


@pytest.mark.parametrize("labels", ["mixed", "start_all_ignored", "mixed+num_items_tensor", "mixed+num_items_int"])
@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_matches_statement_over_dtypes(device, small_blocks, case, labels):
    """S = 40: three 16-token blocks, the last with 8 tokens; H = 100: four 32-feature blocks, the
    last with 4. Mixed labels: clamped negative and ignored (> S and == S) rows."""
    dtype, weight_dtype, cast_dtype = DTYPE_CASES[case]
    B, S, H = 4, 40, 100
    hidden, weight, bias = make_inputs(B, S, H, dtype, device, weight_dtype=weight_dtype)
    start, end, num_items = _labels(labels.replace("start_all_ignored", "mixed"), B, S, device)
    if labels == "start_all_ignored":  # one side with no valid row contributes 0, not 0 * inf
        start = torch.full((B,), S, device=device)
    num_items_tensor = num_items if isinstance(num_items, torch.Tensor) else None
    num_items_value = num_items if isinstance(num_items, int) else None
    out = _fwd(hidden, weight, bias, start, end, num_items_tensor, num_items_value, cast_dtype)
    gwl = _check(out, hidden, weight, cast_dtype, start, end, _tolerance(cast_dtype), case)
    assert gwl.isfinite().all()
    if labels == "start_all_ignored":
        assert torch.count_nonzero(gwl[0]) == 0 and torch.count_nonzero(gwl[1]) > 0
    # The logits and the loss are the plain forward's, bitwise (same blocks under the interpreter).
    plain = tk.qa_head_fwd(hidden, weight, bias, start, end, num_items_tensor, num_items_value, cast_dtype, False)
    assert plain[5].shape == (0,)
    if DEVICE == "cpu":
        for x, y, name in zip(out[:5], plain[:5], ["start", "end", "loss", "lse", "scale"], strict=True):
            assert torch.equal(x.nan_to_num(), y.nan_to_num()), name


@pytest.mark.parametrize("blocks", ["interpreter", "small"])
@pytest.mark.parametrize("shape", [(3, 513, 100), (1, 1, 31), (2, 7, 1024)], ids=lambda s: "x".join(map(str, s)))
def test_matches_statement_over_shapes(device, request, blocks, shape):
    """The launcher's own blocks and the small ones. S = 513: two full 256-token blocks and one of 1
    token (33 blocks of 16, the last of 1); S = 1: a one-token softmax; H = 1024 and 31 (one block,
    masked)."""
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    B, S, H = shape
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = _labels("mixed", B, S, device)
    out = _fwd(hidden, weight, bias, start, end)
    _check(out, hidden, weight, None, start, end, TOL, f"{shape} {blocks}")
    # and against the torch implementation's own forward (its logits, lse and scale)
    ref = torch_impl.qa_head_fwd(hidden, weight, bias, start, end, None, None, None, True)
    assert_close(out[5], ref[5], TOL, "vs torch_impl.qa_head_fwd")


@pytest.mark.parametrize("layout", ["transposed", "sliced_s", "expanded_batch"])
def test_strided_hidden(device, small_blocks, layout):
    """Non-contiguous hidden: the tile re-read and the target rows go through its strides."""
    B, S, H = 3, 40, 48
    if layout == "transposed":  # (B, H, S) storage seen as (B, S, H): stride_h != 1
        hidden = torch.randn(B, H, S, device=device).transpose(1, 2)
    elif layout == "sliced_s":  # a window of a longer sequence
        hidden = torch.randn(B, S + 5, H, device=device)[:, 2 : S + 2]
    else:  # one sequence broadcast over the batch: stride_b == 0
        hidden = torch.randn(1, S, H, device=device).expand(B, S, H)
    assert not hidden.is_contiguous()
    _, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = _labels("mixed", B, S, device)
    out = _fwd(hidden, weight, bias, start, end)
    _check(out, hidden, weight, None, start, end, TOL, layout)
    contiguous = _fwd(hidden.contiguous(), weight, bias, start, end)
    assert_close(out[5], contiguous[5], TOL, f"{layout} vs contiguous")


@pytest.mark.parametrize("blocks", ["interpreter", "small"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bitwise_deterministic(device, request, blocks, dtype):
    """Fixed-order sums, no atomics: two calls give the same bits (grad_weight_loss and the rest)."""
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    B, S, H = 3, 300, 100
    hidden, weight, bias = make_inputs(B, S, H, dtype, device)
    start, end, _ = _labels("mixed", B, S, device)
    first = _fwd(hidden, weight, bias, start, end)
    second = _fwd(hidden, weight, bias, start, end)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x.nan_to_num(), y.nan_to_num()) and torch.equal(x.isnan(), y.isnan())


def test_split_grid_blocks_past_s(device, small_blocks, monkeypatch):
    """Past 65535 S blocks the grid splits them over dims 1 and 2, and the last programs lie past S:
    their partial rows (max -inf, sums 0) must add exactly nothing. With grid dim 1 capped at 2, S = 40
    is 3 blocks of 16 as (B, 2, 2) programs: one past S per row."""
    B, S, H = 3, 40, 100
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = _labels("mixed", B, S, device)
    whole = _fwd(hidden, weight, bias, start, end)
    grids, token_grid = [], tk._token_grid

    def recorded_grid(*args):
        grids.append(token_grid(*args))
        return grids[-1]

    monkeypatch.setattr(tk, "_MAX_GRID", (2**31 - 1, 2, 65535))
    monkeypatch.setattr(tk, "_token_grid", recorded_grid)
    split = _fwd(hidden, weight, bias, start, end)
    assert grids == [(B, 2, 2)]
    _check(split, hidden, weight, None, start, end, TOL, "split grid")
    # the combine's per-row sums gain a (zero) term: the same up to fp32 summation order
    assert_close(split[5], whole[5], TOL, "split vs whole grid")


def test_large_magnitude_logits(device, small_blocks):
    """Logits in the thousands, and blocks whose logits all lie far below their row's logsumexp
    (exp(block max - lse) underflows to 0): the factored softmax exp(x - m) * exp(m - lse) keeps
    both factors <= 1, so nothing overflows."""
    B, S, H = 3, 40, 64
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    hidden = hidden * torch.linspace(1.0, 300.0, S, device=device).view(1, S, 1)  # |logits| up to ~1e3
    bias = torch.tensor([2000.0, -3000.0], device=device)
    start, end = torch.tensor([5, 39, 20], device=device), torch.tensor([0, 17, 33], device=device)
    out = _fwd(hidden, weight, bias, start, end)
    gwl = _check(out, hidden, weight, None, start, end, TOL, "large logits")
    assert gwl.isfinite().all() and out[3].isfinite().all()


def _overflowing_fp16_inputs(device, B=3, S=40, H=31):
    """fp16 hidden whose tokens 0-15 of row 0 make start logits overflow to +inf and end logits to
    -inf (hidden finite): a whole 16-token block at -inf on the end side, a +inf logit on the start."""
    hidden, _, _ = make_inputs(B, S, H, torch.float16, device)
    weight = torch.stack([torch.ones(H), -torch.ones(H)]).to(device, torch.float16) * 8
    hidden[0, :16] = 300.0  # 300 * 8 * 31 = 74400 > 65504: +-inf once rounded to fp16
    return hidden, weight


def test_minus_inf_block_gives_finite_results(device, small_blocks):
    """A block whose logits are all -inf (fp16 overflow, hidden finite): eager's softmax is 0 there and
    its gradient finite. The kernel's shift is 0 there, not -inf (-inf - -inf would be NaN). The start
    side's +inf logits sit on a row ignored for the start: its NaN partial must not leak (tl.where)."""
    B, S, H = 3, 40, 31
    hidden, weight = _overflowing_fp16_inputs(device, B, S, H)
    start = torch.tensor([S, 3, 30], device=device)  # row 0 (the +inf start logits) ignored
    end = torch.tensor([20, 17, S + 2], device=device)
    out = _fwd(hidden, weight, None, start, end)
    assert out[1][0, :16].isneginf().all() and out[0][0, :16].isposinf().all()
    gwl = _check(out, hidden, weight, None, start, end, TOL, "-inf block")
    assert gwl.isfinite().all()


def test_plus_inf_logit_on_a_valid_row_gives_nan_as_eager(device, small_blocks):
    """A +inf logit on a valid row: eager's loss and gradients are NaN (inf - inf), so is ours, on
    that side only (the end side's -inf block stays finite)."""
    B, S, H = 3, 40, 31
    hidden, weight = _overflowing_fp16_inputs(device, B, S, H)
    start = torch.tensor([3, 3, 30], device=device)
    end = torch.tensor([20, 17, S + 2], device=device)
    out = _fwd(hidden, weight, None, start, end)
    gwl = _check(out, hidden, weight, None, start, end, TOL, "+inf logit")  # NaN exactly where expected
    assert gwl[0].isnan().all() and gwl[1].isfinite().all()


def test_num_items_zero(device, small_blocks):
    """num_items_in_batch = 0: scale inf. With valid rows the result is +-inf (NaN where a sum is 0),
    as the two-pass path's; a side with no valid row still contributes exactly 0."""
    B, S, H = 3, 40, 31
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    start, end, _ = _labels("mixed", B, S, device)
    end = torch.full((B,), S, device=device)  # the end side: no valid row
    out = _fwd(hidden, weight, bias, start, end, None, 0)
    expected = _statement(hidden, weight, None, out, start, end)
    assert out[4][0].isinf() and expected[0].isinf().any()
    assert torch.equal(out[5].isnan(), expected.isnan())
    assert torch.equal(out[5].nan_to_num(), expected.nan_to_num())  # the same infinities, same signs
    assert torch.count_nonzero(out[5][1]) == 0


def test_int32_and_strided_positions(device, small_blocks):
    """int32 positions, and views with stride 2 (columns of one (B, 2) tensor): the combine kernel
    reads them through their strides, as the loss kernel does."""
    B, S, H = 4, 40, 31
    hidden, weight, bias = make_inputs(B, S, H, torch.float32, device)
    both = torch.tensor([[-3, 5], [12, S], [S + 4, 39], [0, 7]], device=device, dtype=torch.int32)
    start, end = both[:, 0], both[:, 1]
    assert start.stride(0) == 2
    out = _fwd(hidden, weight, bias, start, end)
    _check(out, hidden, weight, None, start, end, TOL, "int32 strided")
    dense = _fwd(hidden, weight, bias, start.long().contiguous(), end.long().contiguous())
    assert torch.equal(out[5], dense[5])


def test_empty_batch(device):
    """B = 0: no program of the logits kernel; the combine writes zeros (no valid row on either side)."""
    hidden, weight, bias = make_inputs(0, 7, 31, torch.float32, device)
    start = torch.zeros(0, dtype=torch.long, device=device)
    out = _fwd(hidden, weight, bias, start, start)
    assert out[5].shape == (2, 31) and torch.count_nonzero(out[5]) == 0


def test_without_labels_no_gradient(device):
    """one_pass without labels: grad_weight_loss is empty, as without one_pass."""
    hidden, weight, bias = make_inputs(2, 7, 31, torch.float32, device)
    out = tk.qa_head_fwd(hidden, weight, bias, None, None, None, None, None, True)
    assert [t.shape for t in out[2:]] == [(0,)] * 5
