"""The registry (qa_kernels.backend): every implementation in its table loads and has the op's
functions, auto's preferences and the substitutes are what the table says, and a backend that
cannot run is refused with the op, the device and the reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import qa_kernels
from qa_kernels import backend as qa_backend

FUNCTIONS = {"qa_head": ("qa_head_fwd", "qa_head_bwd"), "decode_spans": ("decode_spans",)}
OPS_DIR = Path(qa_kernels.__file__).parent / "ops"


def test_the_table_has_each_backend_of_each_op_once():
    keys = [(entry.op, entry.backend) for entry in qa_backend.TABLE]
    assert len(keys) == len(set(keys))
    assert {op for op, _ in keys} == set(qa_backend.OPS)
    for op in qa_backend.OPS:
        assert {b for o, b in keys if o == op} == {"torch", "triton", "native"}, op
        assert qa_backend.unavailable(op, "torch", "cpu") is None  # the fallback always runs


@pytest.mark.parametrize("entry", qa_backend.TABLE, ids=lambda e: f"{e.op}-{e.backend}")
def test_each_available_implementation_loads_with_the_ops_functions(entry):
    reason = qa_backend.unavailable(entry.op, entry.backend, "cpu")
    if reason is not None:
        pytest.skip(reason)
    with qa_kernels.use_backend(entry.backend):
        impl = qa_backend.implementation(entry.op, "cpu")
    assert impl.__name__ == entry.module
    for name in FUNCTIONS[entry.op]:
        assert callable(getattr(impl, name)), (entry, name)


def test_every_row_names_a_module_and_every_implementation_module_has_a_row():
    """The table and ops/<op>/<backend>_impl.py agree both ways (checked without importing: a row
    for a backend that cannot run here still names a file that exists)."""
    rows = {entry.module for entry in qa_backend.TABLE}
    for module in sorted(rows):
        assert importlib.util.find_spec(module) is not None, f"{module} (a TABLE row) does not exist"
    files = {f"qa_kernels.ops.{p.parent.name}.{p.stem}" for p in OPS_DIR.glob("*/*_impl.py")}
    assert files == rows, f"without a row: {sorted(files - rows)}; rows without a module: {sorted(rows - files)}"


def test_auto_takes_the_first_available_in_the_table_order(monkeypatch):
    monkeypatch.delenv("QA_KERNELS_BACKEND", raising=False)
    for device, order in qa_backend.AUTO.items():
        for op in qa_backend.OPS:
            expected = next(b for b in order if qa_backend.unavailable(op, b, device) is None)
            assert qa_backend.resolve(op, device) == expected, (op, device)
    assert qa_backend.resolve("qa_head", "meta") == "torch"  # a device auto has no entry for


def test_native_span_decoding_on_cuda_is_substituted_not_refused():
    """decode_spans has no CUDA C++ kernel: with native chosen, Triton's kernel decodes on CUDA (the
    torch one without Triton), while the head raises."""
    with qa_kernels.use_backend("native"):
        expected = "triton" if qa_backend.unavailable("decode_spans", "triton", "cuda") is None else "torch"
        assert qa_backend.resolve("decode_spans", "cuda") == expected


def test_a_backend_that_cannot_run_is_refused_with_op_device_and_reason():
    with (
        qa_kernels.use_backend("triton"),
        pytest.raises(
            RuntimeError, match=r"'triton' was requested for qa_head on xpu tensors, but .* has no xpu kernel"
        ),
    ):
        qa_backend.resolve("qa_head", "xpu")
    with qa_kernels.use_backend("native"), pytest.raises(RuntimeError, match="requested for qa_head on xpu"):
        qa_backend.resolve("qa_head", "xpu")
