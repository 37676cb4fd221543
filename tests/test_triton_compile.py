"""The Triton kernels (QA head and span decoding) compiled for Hopper (sm_90) by the real compiler,
no GPU needed.

The CPU interpreter runs the kernels' arithmetic but never compiles them; this compiles every
variant the launchers use (dtypes, autocast rounding, int32/int64 positions, every gradient
subset) to a cubin and checks that none spills registers to local memory.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

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
