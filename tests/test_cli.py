"""The ``qa-kernels`` command: ``bench`` runs a tiny benchmark end to end (table, CSV, PNG), rejects bad
options with an error naming the option, and counts the bytes each mode must move. No timed
assertions: the machine running the tests is shared."""

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from qa_kernels import backend as qa_backend
from qa_kernels import cli
from qa_kernels.bench import harness, spans
from qa_kernels.bench.head import HeadSuite, moved_bytes

REQUIRED_COLUMNS = {
    "device", "torch", "triton", "dtype", "B", "S", "H", "mode", "provider",
    "median_ms", "p20_ms", "p80_ms", "gbps", "copy_gbps", "peak_mem_mb",
}  # fmt: skip
# Tiny shapes, near-zero timing budgets: each case runs a handful of times.
TINY = ["--warmup-ms", "0", "--rep-ms", "0", "--no-progress"]


def _read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_writes_table_csv_and_png(tmp_path, capsys):
    out_csv, out_png = tmp_path / "r.csv", tmp_path / "sub" / "r.png"
    argv = ["bench", "--shapes", "2x16x32", "3x8x64", "--providers", "eager", "--modes", "inference", "fwd+bwd"]
    assert cli.main([*argv, *TINY, "--csv", str(out_csv), "--plot", str(out_png)]) == 0

    printed = capsys.readouterr().out
    assert "copy bandwidth" in printed and "qa-kernels bench --shapes 2x16x32" in printed
    rows = _read(out_csv)
    assert REQUIRED_COLUMNS <= set(rows[0])
    got = [(r["B"], r["S"], r["H"], r["mode"], r["provider"]) for r in rows]
    assert got == [
        ("2", "16", "32", "inference", "eager"),
        ("2", "16", "32", "fwd+bwd", "eager"),
        ("3", "8", "64", "inference", "eager"),
        ("3", "8", "64", "fwd+bwd", "eager"),
    ]
    for r in rows:
        assert r["dtype"] == "fp32" and r["torch"] == torch.__version__
        assert 0 < float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert float(r["gbps"]) == pytest.approx(float(r["moved_mb"]) / float(r["median_ms"]))  # MB/ms = GB/s
        assert float(r["copy_gbps"]) > 0
        assert float(r["max_err"]) < 1e-5  # fp32 against the float64 reference
        assert float(r["speedup_vs_eager"]) == 1.0
    assert out_png.read_bytes().startswith(b"\x89PNG")


def test_bench_every_provider_here(tmp_path, capsys):
    """Every provider that can run here (compile; triton under the interpreter; native when built),
    every mode, and --append adding a second run's rows to the first."""
    suite = HeadSuite()
    providers = [p for p in suite.providers if suite.unavailable(p, "cpu") is None]
    out_csv = tmp_path / "r.csv"
    argv = ["bench", "--shapes", "2x16x32", "--providers", *providers, *TINY, "--csv", str(out_csv)]
    assert cli.main(argv) == 0
    again = ["--append", "--providers", "eager", "--modes", "fwd", "--plot", str(tmp_path / "t.png")]
    assert cli.main([*argv, *again, "--plot-metric", "time"]) == 0
    rows = _read(out_csv)
    assert len(rows) == len(providers) * len(suite.modes) + 1
    assert {r["provider"] for r in rows} == set(providers)
    for r in rows:
        assert float(r["max_err"]) < 1e-5, r
    assert (tmp_path / "t.png").exists()
    if "triton" in providers:
        assert "triton" in capsys.readouterr().out


def test_bench_interrupted_keeps_what_was_measured(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or `timeout -s INT`) half-way: the rows measured so far are printed and written, and
    the exit status says the run was cut short."""
    real, calls = harness.time_interleaved, []

    def interrupt_on_the_second_mode(cases, timer):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cases, timer)

    monkeypatch.setattr(harness, "time_interleaved", interrupt_on_the_second_mode)
    out_csv = tmp_path / "r.csv"
    argv = ["bench", "--shapes", "2x16x32", "--providers", "eager", "--modes", "inference", "fwd", *TINY]
    assert cli.main([*argv, "--csv", str(out_csv)]) == 130
    assert [r["mode"] for r in _read(out_csv)] == ["inference"]
    assert "keeping the 1 rows measured so far" in capsys.readouterr().err


def test_bench_shows_a_progress_bar(capsys):
    assert cli.main(["bench", "--shapes", "1x4x8", "--providers", "eager", "--modes", "inference", *TINY[:-1]]) == 0
    assert "bench head" in capsys.readouterr().err


def test_append_refuses_other_columns(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other columns"):
        harness.write_csv([], str(path), HeadSuite(), append=True)


def test_append_onto_other_columns_fails_before_the_run(tmp_path, capsys, monkeypatch):
    """Checked before anything is measured, not with a traceback after the whole run."""
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    monkeypatch.setattr(harness, "measure", lambda *a, **k: pytest.fail("the run started"))
    with pytest.raises(SystemExit):
        cli.main(["bench", "--shapes", "1x4x8", "--providers", "eager", "--csv", str(path), "--append", *TINY])
    assert f"--append: {path} has other columns" in capsys.readouterr().err
    assert path.read_text() == "a,b\n1,2\n"


def test_default_run_says_which_providers_it_leaves_out(capsys, monkeypatch):
    """Without the extension (simulated), the default set drops native, and says so with the reason."""
    monkeypatch.setattr(
        HeadSuite, "unavailable", lambda self, p, d: "simulated: no extension" if p == "native" else None
    )
    assert cli.main(["bench", "--shapes", "1x4x8", "--modes", "inference", *TINY]) == 0
    err = capsys.readouterr().err
    assert "note: provider native left out on cpu: simulated: no extension" in err


def test_loaded_machine_and_noisy_results_are_flagged(capsys, monkeypatch):
    """A load average above the core count warns before the run; a result whose p20-p80 spread is
    wider than its median warns after it, naming the case."""
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    monkeypatch.setattr(harness, "summarize", lambda t: (1.0, 0.1, 5.0))  # (median, p20, p80): a wide spread
    argv = ["bench", "--shapes", "1x4x8", "--providers", "eager", "--modes", "inference", *TINY]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: the load average is 99.0" in err
    assert "warning: 1 of 1 results spread wider than their median" in err and "1x4x8 fp32 inference eager" in err


def test_noisy_rows_only_flags_spreads_wider_than_the_median():
    suite = HeadSuite()
    base = {"B": 1, "S": 4, "H": 8, "dtype": "fp32", "mode": "fwd", "provider": "eager"}
    rows = [
        base | {"median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.2},
        base | {"median_ms": 1.0, "p20_ms": 0.5, "p80_ms": 1.6},
    ]
    assert harness.noisy_rows(rows, suite) == ["1x4x8 fp32 fwd eager"]


def test_csv_round_trip(tmp_path):
    row = {c: None for c in harness.columns(HeadSuite())} | {"B": 2, "median_ms": 0.5, "provider": "eager"}
    harness.write_csv([row], str(tmp_path / "r.csv"), HeadSuite())
    assert harness.read_csv(str(tmp_path / "r.csv")) == [row]


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--shapes", "32x384"], "--shapes"),  # two dimensions for three
        (["--shapes", "32x0x8"], "--shapes"),  # a zero size
        (["--shapes", "bert-huge"], "--shapes"),  # not a preset
        (["--dtypes", "fp8"], "--dtypes"),
        (["--modes", "train"], "--modes"),
        (["--providers", "cudnn"], "--providers"),
        (["--append"], "--append"),  # without --csv
        (["--rep-ms", "-1"], "--rep-ms"),
        (["--threads", "0"], "--threads"),
        (["--plot-metric", "flops"], "--plot-metric"),
        (["--suite", "nope"], "--suite"),
        (["--suite", "spans", "--shapes", "2x16x32"], "--shapes"),  # three dimensions for two
        (["--suite", "spans", "--shapes", "bert-base"], "--shapes"),  # the head's preset
        (["--suite", "spans", "--modes", "fwd"], "--modes"),
        (["--suite", "spans", "--providers", "eager"], "--providers"),
    ],
)
def test_bad_options_name_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "usage: qa-kernels bench" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors for what a CPU-only machine lacks")
def test_unavailable_device_and_providers_are_explained(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the whole test: as without a GPU
    for suite in ("head", "answer"):
        with pytest.raises(SystemExit):
            cli.main(["bench", "--suite", suite, "--device", "cuda"])
        assert "--device: cuda was asked for but torch sees no CUDA device" in capsys.readouterr().err
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["bench", "--providers", "triton"])
    assert "--providers: triton cannot run on cpu" in capsys.readouterr().err
    if not qa_backend.native_available():
        with pytest.raises(SystemExit):
            cli.main(["bench", "--providers", "native"])
        assert "--providers: native cannot run on cpu" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--shapes", "--dtypes", "--providers", "--modes", "--csv", "--plot"):
        assert option in out


def test_byte_counts():
    # bert-large SQuAD in bf16: hidden is 32 * 384 * 1024 * 2 bytes = 25.2 MB.
    hidden = 32 * 384 * 1024 * 2
    shape = (32, 384, 1024)
    assert moved_bytes("inference", shape, "bf16") == hidden  # read hidden once
    assert moved_bytes("fwd", shape, "bf16") == hidden  # read hidden once
    assert moved_bytes("bwd", shape, "bf16") == hidden  # write grad_hidden (the forward did grad_weight)
    assert moved_bytes("fwd+bwd", shape, "bf16") == 2 * hidden == 50_331_648  # the 50 MB floor
    assert moved_bytes("head-only", shape, "bf16") == hidden  # read hidden once, write nothing large
    assert moved_bytes("fwd+bwd", shape, "fp32") == 2 * moved_bytes("fwd+bwd", shape, "fp16")


def test_default_run_covers_the_providers_available_here():
    suite = HeadSuite()
    assert suite.default_providers("cpu")[:2] == ["eager", "compile"]
    assert "triton" not in suite.default_providers("cpu")  # the interpreter is for tests, not timing
    assert suite.default_shapes("cuda") == [(32, 384, 768), (32, 384, 1024)]
    assert suite.default_dtypes("cuda") == ["bf16"]


def _load_script(name: str):
    """A script of benchmarks/ (not a package) as a module."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_smoke_never_writes_the_committed_results(tmp_path, monkeypatch):
    """--smoke writes under build/sweep-smoke/ of the working directory, not benchmarks/results/."""
    sweep = _load_script("sweep")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in Path(sweep.RESULTS).iterdir())
    monkeypatch.chdir(tmp_path)
    argv = ["--smoke", "--shapes", "1x4x8", "--providers", "eager", "--modes", "fwd", *TINY]
    assert sweep.main([*argv, "--name", "dev"]) == 0
    assert len(_read(tmp_path / "build" / "sweep-smoke" / "dev.csv")) == 1
    assert sorted((p.name, p.stat().st_mtime_ns) for p in Path(sweep.RESULTS).iterdir()) == before


def test_sweep_script_writes_csv_and_png(tmp_path):
    sweep = _load_script("sweep")
    argv = ["--shapes", "1x4x8", "2x4x8", "--dtypes", "fp32", "--providers", "eager", "--modes", "fwd", *TINY]
    assert sweep.main([*argv, "--out", str(tmp_path), "--name", "dev"]) == 0
    assert len(_read(tmp_path / "dev.csv")) == 2
    assert (tmp_path / "dev.png").read_bytes().startswith(b"\x89PNG")


def test_e2e_script_runs_a_tiny_bert(tmp_path, capsys):
    e2e = _load_script("e2e_bert")
    assert (
        e2e.main(["--models", "tiny", "--batch", "2", "--seq", "16", "--rep-ms", "1", "--csv", str(tmp_path / "e.csv")])
        == 0
    )
    (row,) = _read(tmp_path / "e.csv")
    assert row["model"] == "tiny" and float(row["step_eager_ms"]) > 0 and float(row["head_fused_ms"]) > 0
    assert "head share" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# The spans suite: transformers' per-feature decoding against decode_spans


def test_spans_bench_writes_table_and_csv(tmp_path, capsys):
    out_csv = tmp_path / "spans.csv"
    argv = ["bench", "--suite", "spans", "--shapes", "3x16", "5x48", *TINY, "--csv", str(out_csv)]
    assert cli.main(argv) == 0

    printed = capsys.readouterr().out
    assert "qa-kernels bench (spans)" in printed and "vs transformers" in printed
    rows = _read(out_csv)
    assert list(rows[0]) == harness.columns(spans.SpansSuite())
    assert {"F", "S", "speedup_vs_transformers"} <= set(rows[0]) and not {"B", "H", "speedup_vs_eager"} & set(rows[0])
    providers = spans.SpansSuite().default_providers("cpu")
    assert providers[:2] == ["transformers", "torch"] and "triton" not in providers
    got = [(r["F"], r["S"], r["mode"], r["provider"]) for r in rows]
    assert got == [(F, S, "decode", p) for F, S in (("3", "16"), ("5", "48")) for p in providers]
    for r in rows:
        assert r["suite"] == "spans" and r["dtype"] == "fp32"
        assert 0 < float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert float(r["moved_mb"]) * 1e6 == spans.moved_bytes("decode", (int(r["F"]), int(r["S"])), "fp32")
        assert float(r["max_err"]) == 0.0, r  # every feature's best span is transformers'
        if r["provider"] == "transformers":
            assert float(r["speedup_vs_transformers"]) == 1.0


def test_spans_bench_every_provider_here(tmp_path):
    """Every provider that can run here (triton under the interpreter, native when built) agrees
    with transformers on every feature's best span, fp32 and bf16 logits alike."""
    suite = spans.SpansSuite()
    providers = [p for p in suite.providers if suite.unavailable(p, "cpu") is None]
    out_csv = tmp_path / "r.csv"
    argv = ["bench", "--suite", "spans", "--shapes", "3x16", "--dtypes", "fp32", "bf16", "--providers", *providers]
    assert cli.main([*argv, *TINY, "--csv", str(out_csv)]) == 0
    rows = _read(out_csv)
    assert [(r["dtype"], r["provider"]) for r in rows] == [(d, p) for d in ("fp32", "bf16") for p in providers]
    for r in rows:
        assert float(r["max_err"]) == 0.0, r


@pytest.mark.parametrize("seq_len", [1, 2, 3, 5, 16, 41, 384])
def test_spans_features_have_a_context(seq_len):
    """Every feature has at least one context token, after CLS (token 0) when there is room."""
    features = spans.make_features(8, seq_len, generator=torch.Generator().manual_seed(0))
    assert features.start.shape == features.end.shape == features.context.shape == (8, seq_len)
    assert features.context.any(dim=1).all()
    if seq_len >= 3:
        assert not features.context[:, 0].any()


def test_spans_error_is_the_fraction_of_features_whose_best_span_differs(monkeypatch):
    real = spans.decode_spans

    def off_on_two_features(*args, **kwargs):
        out = real(*args, **kwargs)
        starts = out.starts.clone()
        starts[1:3, 0] += 1
        return out._replace(starts=starts)

    monkeypatch.setattr(spans, "decode_spans", off_on_two_features)
    work = spans.SpansSuite().workload((4, 16), "fp32", "cpu", ["transformers", "torch"], cache_bytes=0)
    try:
        assert work.max_error("transformers", "decode") == 0.0
        assert work.max_error("torch", "decode") == 0.5
    finally:
        work.close()


def test_spans_byte_counts():
    # fp32, F=64, S=384: the two logits, the bool mask, the (F, 20) int64/int64/float32 outputs and the
    # (F,) null scores.
    assert spans.moved_bytes("decode", (64, 384), "fp32") == 2 * 64 * 384 * 4 + 64 * 384 + 64 * (20 * 20 + 4)
    assert spans.moved_bytes("decode", (64, 384), "bf16") == 2 * 64 * 384 * 2 + 64 * 384 + 64 * 404
    with pytest.raises(ValueError, match="unknown mode"):
        spans.moved_bytes("fwd", (64, 384), "fp32")


def test_spans_script_is_the_cli_suite(tmp_path, capsys):
    bench_spans = _load_script("bench_spans")
    out_csv = tmp_path / "s.csv"
    argv = ["--shapes", "2x16", "--providers", "transformers", "torch", *TINY, "--csv", str(out_csv)]
    assert bench_spans.main(argv) == 0
    assert "qa-kernels bench --suite spans --warmup-ms 100 --rep-ms 1000 --shapes 2x16" in capsys.readouterr().out
    assert [r["provider"] for r in _read(out_csv)] == ["transformers", "torch"]


def test_hot_script_is_the_cli_with_one_input_set(tmp_path, capsys):
    bench_hot = _load_script("bench_hot")
    hot = bench_hot.Hot(HeadSuite())
    cold = HeadSuite().workload((1, 4, 8), "fp32", "cpu", ["eager"], cache_bytes=1 << 20)
    assert len(cold.sets) > 1
    assert len(hot.workload((1, 4, 8), "fp32", "cpu", ["eager"], cache_bytes=1 << 20).sets) == 1
    assert (hot.name, hot.dims, hot.providers) == ("head-hot", HeadSuite.dims, HeadSuite.providers)

    out_csv = tmp_path / "hot.csv"
    argv = ["--shapes", "1x4x8", "--providers", "eager", "--modes", "fwd", *TINY, "--csv", str(out_csv)]
    assert bench_hot.main(argv) == 0
    assert "qa-kernels bench (head-hot)" in capsys.readouterr().out
    assert [(r["suite"], r["provider"]) for r in _read(out_csv)] == [("head-hot", "eager")]
    assert cli.main(["bench", *argv]) == 0  # the CLI's own suites are back
    assert [r["suite"] for r in _read(out_csv)] == ["head"]


def test_doctor_reports_versions_the_extension_and_what_runs(capsys):
    assert cli.main(["doctor"]) == 0
    printed = capsys.readouterr().out
    for section in ("versions:", "devices:", "native extension:", "triton:", "implementation that runs:"):
        assert section in printed, printed
    assert f"torch         {torch.__version__}" in printed
    expected = qa_backend.resolve("qa_head", "cpu")
    assert any(line.split() == ["qa_head", "on", "cpu", expected] for line in printed.splitlines()), printed


def test_doctor_says_what_a_first_call_would_compile(capsys, monkeypatch):
    from qa_kernels import native

    facts = {"sources": "x", "loaded": "not yet: the first use compiles the sources just in time (minutes)"}
    monkeypatch.setattr(native, "report", lambda load=False: facts)
    monkeypatch.setattr(native, "needs_compile", lambda: True)
    assert cli.main(["doctor"]) == 0
    printed = capsys.readouterr().out
    assert "native once the just-in-time build succeeds, else torch" in printed
