"""The native extension's loading, fallback and build. (Its numerics are held to the same matrix as
every backend through conftest's `backend` fixture: tests/test_qa_head.py and friends.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import qa_kernels
from qa_kernels import backend as qa_backend
from qa_kernels import native

REPO = Path(__file__).resolve().parent.parent

requires_native = pytest.mark.skipif(
    not native.available(), reason=f"native extension not built here: {native.unavailable_reason()}"
)


@pytest.fixture
def fresh_loader(monkeypatch):
    """Forget the cached load result and the fallback warning (the library itself stays loaded), and
    again afterwards."""
    native._load.cache_clear()
    qa_backend._warn_native_fallback.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    native._load.cache_clear()
    qa_backend._warn_native_fallback.cache_clear()


@requires_native
def test_auto_picks_native_on_cpu(monkeypatch):
    monkeypatch.delenv("QA_KERNELS_BACKEND", raising=False)
    with qa_kernels.use_backend("auto"):
        assert qa_backend.resolve("qa_head", "cpu") == "native"
    assert native.has_device_kernels("cpu")
    if not torch.cuda.is_available() and torch.version.cuda is None:
        assert not native.has_device_kernels("cuda")  # a CPU torch builds no CUDA kernels


@requires_native
def test_second_load_registers_nothing(fresh_loader):
    """Once the ops are registered, loading again must not load any library (a second registration
    of the namespace would abort the process)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a second library load was attempted")

    fresh_loader.setattr(torch.ops, "load_library", forbidden)
    fresh_loader.setattr(native, "_jit_build", forbidden)
    assert native.available()


@requires_native
def test_fresh_process_loads_once_and_survives_repeated_loads():
    """A new process: repeated loads (and a cleared cache) keep one registration, and the op runs."""
    script = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error")
        import torch, qa_kernels
        from qa_kernels import native
        assert native.available() and native.available()
        native._load.cache_clear()
        assert native.available()
        out = torch.ops.qa_kernels_native.qa_head_fwd(
            torch.ones(1, 3, 4), torch.ones(2, 4), None, None, None, None, None, None, False)
        assert out[0].tolist() == [[4.0, 4.0, 4.0]], out
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_failed_build_warns_once_at_the_fallback_and_never_before_a_refusal(fresh_loader):
    """Asking whether the extension is there is silent; ``auto`` warns once, with the reason, when it
    falls back; an explicit ``native`` raises with the reason and says nothing about a fallback."""
    import warnings

    def failing_build():
        raise RuntimeError("simulated compiler failure")

    fresh_loader.setattr(native, "_ops_registered", lambda: False)
    fresh_loader.setattr(native, "_prebuilt_path", lambda: None)
    fresh_loader.setattr(native, "_jit_build", failing_build)
    fresh_loader.delenv("QA_KERNELS_BACKEND", raising=False)
    fresh_loader.delenv("QA_KERNELS_NO_JIT", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.available()
        assert "simulated compiler failure" in native.unavailable_reason()
        with qa_kernels.use_backend("native"), pytest.raises(RuntimeError, match="simulated compiler failure"):
            qa_kernels.qa_head(torch.randn(2, 5, 8), torch.randn(2, 8))
    with qa_kernels.use_backend("auto"):
        with pytest.warns(RuntimeWarning, match="native extension is unavailable.*simulated compiler failure.*torch"):
            assert qa_backend.resolve("qa_head", "cpu") == "torch"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process
            out = qa_kernels.qa_head(torch.randn(2, 5, 8), torch.randn(2, 8))  # runs, on the fallback
        assert out.start_logits.shape == (2, 5)


def test_missing_compiler_is_named(fresh_loader):
    fresh_loader.setattr(native, "_ops_registered", lambda: False)
    fresh_loader.setattr(native, "_prebuilt_path", lambda: None)
    fresh_loader.setenv("CXX", "no-such-c++-compiler")
    fresh_loader.delenv("QA_KERNELS_NO_JIT", raising=False)
    assert not native.available()
    assert "no C++ compiler ('no-such-c++-compiler'" in native.unavailable_reason()


def test_no_jit_switch(fresh_loader):
    fresh_loader.setattr(native, "_ops_registered", lambda: False)
    fresh_loader.setattr(native, "_prebuilt_path", lambda: None)
    fresh_loader.setenv("QA_KERNELS_NO_JIT", "1")
    assert not native.available()
    assert "QA_KERNELS_NO_JIT=1" in native.unavailable_reason()


def test_build_compiles_every_cpp_file():
    """Each op's folder adds its kernels to the one namespace: the build takes every .cpp under
    csrc/ (and every .cu for CUDA), and no two share a basename (ninja names objects after it)."""
    cpp = sorted(str(p) for p in (REPO / "csrc").rglob("*.cpp"))
    assert native.sources(with_cuda=False) == cpp and len(cpp) >= 3
    cu = sorted(str(p) for p in (REPO / "csrc").rglob("*.cu"))
    assert native.sources(with_cuda=True) == cpp + cu and cu
    stems = [Path(p).name.split(".")[0] for p in cpp + cu]
    assert len(set(stems)) == len(stems), f"two sources share an object name: {sorted(stems)}"


@requires_native
def test_direct_call_errors_name_the_argument():
    ops = torch.ops.qa_kernels_native
    with pytest.raises(RuntimeError, match=r"weight must have shape \(2, 8\) for hidden size 8; got shape \[3, 8\]"):
        ops.qa_head_fwd(torch.randn(2, 5, 8), torch.randn(3, 8), None, None, None, None, None, None, False)
    with pytest.raises(RuntimeError, match=r"start_positions must have shape \(2,\) or \(2, 1\)"):
        ops.qa_head_fwd(torch.randn(2, 5, 8), torch.randn(2, 8), None, torch.zeros(3, dtype=torch.long),
                        torch.zeros(2, dtype=torch.long), None, None, None, False)  # fmt: skip


@requires_native
@pytest.mark.parametrize("objective", ["loss_only", "loss_and_logits"])  # one pass / two passes
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradients_bitwise_equal_across_thread_counts(dtype, objective):
    """grad_weight / grad_bias partials (the backward's, or the one-pass forward's weighted sums)
    are per fixed chunk of rows, summed in chunk order: the bits do not depend on how many threads
    ran (nor on their timing)."""
    B, S, H = 3, 513, 1024
    hidden = torch.randn(B, S, H, dtype=dtype)
    weight = (torch.randn(2, H) * 0.05).to(dtype)
    bias = torch.randn(2, dtype=dtype)
    start, end = torch.tensor([3, S + 1, 500]), torch.tensor([-2, 7, S])

    def grads():
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        with qa_kernels.use_backend("native"):
            out = qa_kernels.qa_head(*leaves, start, end)
        value = out.loss if objective == "loss_only" else out.loss + out.start_logits.float().square().sum()
        return torch.autograd.grad(value, leaves)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grads()
        torch.set_num_threads(max(2, threads))
        many = grads()
    finally:
        torch.set_num_threads(threads)
    for name, x, y in zip(("hidden", "weight", "bias"), one, many, strict=True):
        assert torch.equal(x, y), f"grad_{name} differs between 1 and {max(2, threads)} threads"


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    found = shutil.which("nvcc")
    if found is None and CUDA_HOME is not None and (Path(CUDA_HOME) / "bin" / "nvcc").is_file():
        found = str(Path(CUDA_HOME) / "bin" / "nvcc")
    return found


@pytest.mark.skipif(_nvcc() is None, reason="nvcc (CUDA toolkit) not found: the CUDA sources cannot be compiled here")
def test_cuda_sources_compile(tmp_path):
    """Compile-only (no link): a CPU torch has the c10/ATen headers but no CUDA libraries."""
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{REPO / 'csrc'}"]
    # A CPU build of torch ships c10/cuda's headers without the one CMake generates for CUDA builds;
    # stand it in (its only content there: C10_CUDA_BUILD_SHARED_LIBS).
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").is_file() for p in include_paths()):
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes += ["-isystem", str(tmp_path / "shim")]
    for p in include_paths():
        includes += ["-isystem", p]
    sources = native.sources(with_cuda=True)
    for source in (s for s in sources if s.endswith(".cu")):
        obj = tmp_path / (Path(source).stem + ".o")
        cmd = [_nvcc(), "-c", source, "-o", str(obj), "-std=c++20", "-O1", "-Xcompiler", "-fPIC",
               "-gencode", "arch=compute_90,code=sm_90", *includes]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"nvcc failed on {source}:\n{done.stderr[-4000:]}"
        assert obj.stat().st_size > 0


@requires_native
@pytest.mark.skipif(os.environ.get("QA_KERNELS_CPU_CACHE") == "0", reason="grad_hidden cache turned off")
def test_grad_hidden_buffer_is_reused_only_after_release():
    """The backward's one-slot cache for grad_hidden: a buffer comes back only once its tensor is
    gone, so a live gradient is never overwritten."""
    B, S, H = 4, 384, 1024  # 6 MiB of fp32: above the cache's 4 MiB floor
    hidden, weight = torch.randn(B, S, H), torch.randn(2, H) * 0.05
    ops = torch.ops.qa_kernels_native
    start_logits, end_logits, _, lse, scale, *_ = ops.qa_head_fwd(
        hidden, weight, None, None, None, None, None, None, False
    )

    def grad_hidden(grad_start):  # (B, S) -> (B, S, H) = grad_start[..., None] * weight[0]
        return ops.qa_head_bwd(grad_start, None, None, hidden, weight, start_logits, end_logits, lse, scale,
                               None, None, None, True, False, False)[0]  # fmt: skip

    g1, g2 = torch.randn(B, S), torch.randn(B, S)
    first = grad_hidden(g1)
    first_ptr = first.data_ptr()
    second = grad_hidden(g2)  # first is alive: another buffer
    assert second.data_ptr() != first_ptr
    del first
    third = grad_hidden(g1)  # first's buffer, released, comes back
    assert third.data_ptr() == first_ptr
    torch.testing.assert_close(second, g2[..., None] * weight[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(third, g1[..., None] * weight[0], rtol=1e-6, atol=1e-6)


def test_native_forced_on_a_device_without_its_kernels_is_a_clear_error():
    if native.has_device_kernels("cuda"):
        pytest.skip("this build of the extension has CUDA kernels")
    with qa_kernels.use_backend("native"), pytest.raises(RuntimeError, match="has no cuda kernels"):
        qa_backend.resolve("qa_head", "cuda")


def test_jit_build_says_so_before_compiling(tmp_path, monkeypatch, capsys):
    """A compile blocks the first call for minutes: one line on stderr says why before it starts, and
    nothing is said when the cached build is up to date (ninja then compiles nothing)."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("QA_KERNELS_CACHE", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(native.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: None)  # the compile itself is not under test
    native._jit_build()
    assert f"compiling the native kernels ({native.CSRC_DIR}) just in time" in capsys.readouterr().err
    library = native.build_directory() / "qa_kernels_native.so"
    library.write_bytes(b"")  # a cached build newer than every source
    native._jit_build()
    assert capsys.readouterr().err == ""
    os.utime(library, (0, 0))  # older than the sources: a rebuild, named as such
    native._jit_build()
    assert "the sources changed since the cached build" in capsys.readouterr().err


def test_the_install_time_build_record_is_part_of_the_reason(fresh_loader, tmp_path):
    """A wheel whose build failed says why at first use (setup.py's record), beside the JIT's reason."""
    record = tmp_path / "_build.json"
    record.write_text(json.dumps({"native": "failed", "reason": "compiling csrc/ with 'x' failed: boom",
                                  "torch": torch.__version__, "cuda": False}))  # fmt: skip
    fresh_loader.setattr(native, "BUILD_RECORD", record)
    fresh_loader.setattr(native, "_ops_registered", lambda: False)
    fresh_loader.setattr(native, "_prebuilt_path", lambda: None)
    fresh_loader.setenv("QA_KERNELS_NO_JIT", "1")
    assert not native.available()
    reason = native.unavailable_reason()
    assert "the install-time build failed (compiling csrc/ with 'x' failed: boom)" in reason
    assert "QA_KERNELS_NO_JIT=1" in reason
    assert native.report()["install-time build"].startswith("failed (compiling csrc/ with 'x' failed: boom)")


def test_an_installed_library_is_used_whatever_its_sources_times(tmp_path, monkeypatch):
    """pip writes a wheel's files in any order, so the copy of csrc/ may look newer than _C: only a
    source checkout's csrc/ can make its library stale."""
    suffix = native.importlib.machinery.EXTENSION_SUFFIXES[0]
    library = tmp_path / f"_C{suffix}"
    library.write_bytes(b"")
    os.utime(library, (0, 0))  # older than every source
    monkeypatch.setattr(native, "_PACKAGE_DIR", tmp_path)
    monkeypatch.setattr(native, "_SOURCE_CHECKOUT", False)
    assert native._prebuilt_path() == library
    monkeypatch.setattr(native, "_SOURCE_CHECKOUT", True)
    assert native._prebuilt_path() is None


def test_report_compiles_nothing_unless_asked(fresh_loader, tmp_path):
    def no_build():
        raise AssertionError("report() must not compile")

    fresh_loader.setenv("QA_KERNELS_CACHE", str(tmp_path))  # no cached build
    fresh_loader.setattr(native, "_ops_registered", lambda: False)
    fresh_loader.setattr(native, "_prebuilt_path", lambda: None)
    fresh_loader.setattr(native, "_jit_build", no_build)
    facts = native.report()
    assert facts["loaded"].startswith("not yet: the first use compiles")
    assert {"sources", "install-time build", "prebuilt library", "just-in-time build"} <= facts.keys()


@requires_native
def test_report_names_the_loaded_library_and_its_devices():
    facts = native.report()
    assert facts["loaded"].startswith("yes, from ") and "cpu" in facts["kernels for"]
