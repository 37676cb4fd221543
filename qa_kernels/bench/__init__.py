"""``qa-kernels bench``: benchmark suites, qa_kernels' kernels against what users have.

  head   the QA head: eager PyTorch, torch.compile of it, the Triton and native kernels
  spans  span decoding: transformers' per-feature numpy, decode_spans' torch, native and Triton kernels
  answer answer extraction end to end: QuestionAnswerer against transformers 4.x's question-answering
         pipeline (examples/s, the time split, the answers' agreement); its own runner (answer.py says why)

Each suite (one module here) says what to run; :mod:`.harness` times it, checks its error, and writes
the table, the CSV and the plot. Adding a suite is a module with a class following
:class:`.harness.Suite` and one entry in :data:`SUITES`.
"""

from __future__ import annotations

from .answer import AnswerSuite
from .harness import (
    Environment,
    Suite,
    Timer,
    environment,
    format_table,
    measure,
    noisy_rows,
    plot,
    read_csv,
    warn_if_loaded,
    write_csv,
)
from .head import HeadSuite
from .spans import SpansSuite

SUITES: dict[str, Suite] = {"head": HeadSuite(), "spans": SpansSuite(), "answer": AnswerSuite()}

__all__ = [
    "SUITES",
    "Environment",
    "Suite",
    "Timer",
    "environment",
    "format_table",
    "measure",
    "noisy_rows",
    "plot",
    "read_csv",
    "warn_if_loaded",
    "write_csv",
]
