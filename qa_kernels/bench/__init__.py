"""``qa-kernels bench``: benchmark suites over eager PyTorch, torch.compile and qa_kernels' kernels.

Each suite (one module here) says what to run; :mod:`.harness` times it, checks its error, and writes
the table, the CSV and the plot. Adding a suite is a module with a class following
:class:`.harness.Suite` and one entry in :data:`SUITES`.
"""

from __future__ import annotations

from .harness import Environment, Suite, Timer, environment, format_table, plot, read_csv, run, write_csv
from .head import HeadSuite

SUITES: dict[str, Suite] = {"head": HeadSuite()}

__all__ = [
    "SUITES",
    "Environment",
    "Suite",
    "Timer",
    "environment",
    "format_table",
    "plot",
    "read_csv",
    "run",
    "write_csv",
]
