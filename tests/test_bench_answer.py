"""``qa-kernels bench --suite answer``: a tiny run through the CLI (its rows, the split, the padding
count, the agreement with the pipeline when a transformers 4.x Python is given, the reason when it
is not), the agreement rule itself, the example set, and the options it refuses. No timed
assertions: the machine running the tests is shared."""

from __future__ import annotations

import csv

import pytest

from qa_kernels import cli
from qa_kernels.bench import answer

TINY = ["bench", "--suite", "answer", "--model", "tiny", "--rounds", "1", "--no-progress"]


def _read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def no_pipeline(monkeypatch):
    """No 4.x Python named: the comparison is skipped unless this Python's transformers is 4.x."""
    monkeypatch.delenv(answer.ENV_VAR, raising=False)
    monkeypatch.setattr(answer, "_PROBED", {})
    python, why = answer.pipeline_python()
    if python is not None:
        pytest.skip(f"this Python's transformers has the pipeline ({python}): nothing is skipped")
    return why


def _check_rows(rows, n: int, s: int, providers: list[str], batch_sizes: list[int]) -> None:
    assert [(r["provider"], int(r["batch_size"])) for r in rows] == [(p, b) for p in providers for b in batch_sizes]
    assert list(rows[0]) == answer.COLUMNS
    for r in rows:
        assert (r["suite"], r["mode"], r["dtype"], int(r["N"]), int(r["S"])) == ("answer", "end-to-end", "fp32", n, s)
        assert int(r["stride"]) == s // 3 and int(r["rounds"]) == 1
        features, tokens, model_tokens = int(r["features"]), int(r["tokens"]), int(r["model_tokens"])
        assert features > n  # some contexts overflow into several features
        assert tokens <= model_tokens <= features * s
        if int(r["batch_size"]) == 1:
            assert model_tokens == tokens  # one feature per forward pass: no padding
        median = float(r["median_s"])
        assert float(r["p20_s"]) <= median <= float(r["p80_s"])
        assert float(r["examples_per_s"]) == pytest.approx(n / median)
        parts = [float(r[f"{part}_s"]) for part in answer.PARTS]
        assert all(p >= 0 for p in parts) and parts[1] > 0  # the model always takes time
        assert sum(parts) == pytest.approx(median, rel=1e-6)  # one round: the parts add up to it


def test_answerer_alone_says_why_the_pipeline_is_skipped(tmp_path, capsys, no_pipeline):
    """The answerer with and without the fused head; the output says why the pipeline is not there."""
    out = tmp_path / "a.csv"
    providers = ["answerer", "answerer-unfused"]
    argv = [*TINY, "--shapes", "6x64", "--batch-sizes", "1", "3", "--providers", *providers, "--csv", str(out)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert f"pipeline comparison skipped: {no_pipeline}" in captured.out
    rows = _read(out)
    _check_rows(rows, 6, 64, providers, [1, 3])
    for r in rows:
        assert r["agree_top1"] == r["agree_topk"] == r["compared"] == r["speedup_vs_pipeline_best"] == ""
        assert r["transformers"] and r["torch"]


def test_append_adds_rows_and_refuses_other_columns_before_the_run(tmp_path, capsys, monkeypatch, no_pipeline):
    """--append onto an answer CSV adds rows under one header; onto a CSV of other columns it stops
    before anything runs and leaves the file as it was."""
    out = tmp_path / "a.csv"
    argv = [*TINY, "--shapes", "4x64", "--batch-sizes", "2", "--providers", "answerer", "--csv", str(out)]
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--append"]) == 0
    rows = _read(out)
    assert len(rows) == 2 and list(rows[0]) == answer.COLUMNS
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    monkeypatch.setattr(answer, "run", lambda *a, **k: pytest.fail("the run started"))
    argv = [*TINY, "--shapes", "4x64", "--providers", "answerer", "--csv", str(other), "--append"]
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert f"--append: {other} has other columns than an answer run writes" in capsys.readouterr().err
    assert other.read_text() == "a,b\n1,2\n"


def test_against_the_pipeline(tmp_path, capsys, monkeypatch):
    python, why = answer.pipeline_python()
    if python is None:
        pytest.skip(why)
    out = tmp_path / "p.csv"
    providers = ["pipeline", "answerer"]
    argv = [*TINY, "--shapes", "6x64", "--batch-sizes", "1", "2", "--providers", *providers, "--csv", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "agreement against the pipeline at batch size 1" in printed
    rows = _read(out)
    _check_rows(rows, 6, 64, providers, [1, 2])
    for r in rows:
        assert int(r["compared"]) == 6
        assert int(r["agree_top1"]) == int(r["agree_topk"]) == 6, r  # parity on every example
    pipeline = [r for r in rows if r["provider"] == "pipeline"]
    assert pipeline[0]["transformers"].startswith("4.")
    assert max(float(r["speedup_vs_pipeline_best"]) for r in pipeline) == pytest.approx(1.0)
    at_1 = {r["provider"]: r for r in rows if r["batch_size"] == "1"}
    assert at_1["pipeline"]["model_tokens"] == at_1["answerer"]["model_tokens"]  # the same features both sides


def _answer(text: str, score: float, start: int = 0) -> dict:
    return {"answer": text, "score": score, "start": start, "end": start + len(text)}


def test_the_agreement_rule():
    theirs = [_answer("Paris", 0.5), _answer("PARIS", 0.3, 40), _answer("France", 0.3 * (1 + 1e-5), 20)]
    assert answer.top1_agrees(theirs, theirs) and answer.topk_agrees(theirs, theirs)
    swapped = [theirs[0], theirs[2], theirs[1]]  # tied within RTOL: either order
    assert answer.topk_agrees([{**a, "score": t["score"]} for a, t in zip(swapped, theirs, strict=True)], theirs)
    assert not answer.topk_agrees(theirs[:2], theirs)  # one answer short
    moved = [theirs[0], _answer("PARIS", 0.3, 41), theirs[2]]  # the same text elsewhere
    assert answer.top1_agrees(moved, theirs) and not answer.topk_agrees(moved, theirs)
    off = [{**theirs[0], "score": 0.5 * (1 + 2e-4)}, *theirs[1:]]
    assert not answer.top1_agrees(off, theirs) and not answer.topk_agrees(off, theirs)
    assert answer.top1_agrees([{**theirs[0], "score": 0.5 * (1 + 5e-5)}], theirs)
    tied_top = [_answer("a", 0.4), _answer("b", 0.4 * (1 - 5e-5), 9)]
    assert answer.top1_agrees(tied_top[::-1], tied_top) and not answer.top1_agrees([_answer("c", 0.4)], tied_top)
    assert answer.top1_agrees([], []) and not answer.top1_agrees([], theirs)


def test_the_examples_are_seeded_and_varied():
    examples = answer.make_examples(240, seed=0)
    assert examples == answer.make_examples(240, seed=0) != answer.make_examples(240, seed=1)
    lengths = sorted(len(c) for _, c in examples)
    assert lengths[0] < 200 < 4000 < lengths[-1]  # one sentence up to dozens
    text = " ".join(c for _, c in examples)
    for sample in ("Göteborg", "Άλφα", "東京", "Москва", "€12.50", "🚀"):
        assert sample in text
    assert len({q for q, _ in examples}) == len(answer.QUESTIONS)


@pytest.mark.parametrize(
    "argv, option",
    [
        (["bench", "--suite", "head", "--batch-sizes", "4"], "--batch-sizes"),
        (["bench", "--model", "tiny"], "--model"),
        ([*TINY, "--plot", "x.png"], "--plot"),
        ([*TINY, "--rep-ms", "10"], "--rep-ms"),
        ([*TINY, "--batch-sizes", "0"], "--batch-sizes"),
        ([*TINY, "--shapes", "4x1024"], "--shapes"),
        ([*TINY, "--shapes", "4by64"], "--shapes: '4by64' is neither"),
        ([*TINY, "--append"], "--append: only with --csv PATH"),
        ([*TINY, "--dtypes", "bf16"], "--dtypes"),
        ([*TINY, "--providers", "eager"], "--providers"),
        ([*TINY, "--providers", "pipeline", "--pipeline-python", "/nonexistent/python"], "does not exist"),
    ],
)
def test_bad_options_name_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err
