"""``qa-kernels bench`` with hot inputs: one input set per (shape, dtype), read by every call.

The CLI rotates input sets until the inputs held add up to 2x the last-level cache, so no call finds
its inputs in the cache (cold). Here every call reads the same set, so on CPU the parts that fit in
the cache are read from there (hot). A training step is in between: the head's input was just
written by the last layer. Everything else is the CLI's: the suite's shapes, dtypes, modes,
providers, byte counts and errors, the timing, the table and the CSV (its ``suite`` column reads
``head-hot`` / ``spans-hot``). Every option of ``qa-kernels bench`` is accepted.

    python benchmarks/bench_hot.py --dtypes fp32 bf16 --csv build/bench/hot.csv
    python benchmarks/bench_hot.py --suite spans --threads 1

On CUDA, ``triton.testing.do_bench`` clears the L2 before every call, so hot and cold differ there
only in which memory the inputs occupy.
"""

from __future__ import annotations

import sys
from typing import Any, Optional
from unittest import mock

from qa_kernels import cli
from qa_kernels.bench import SUITES, Suite


class Hot:
    """``suite`` with one input set per workload (``cache_bytes=0``: ``rotation_sets`` gives 1)."""

    def __init__(self, suite: Suite) -> None:
        self._suite = suite
        self.name = f"{suite.name}-hot"

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._suite, attribute)

    def workload(self, shape, dtype, device, providers, cache_bytes):
        return self._suite.workload(shape, dtype, device, providers, 0)


def main(argv: Optional[list[str]] = None) -> int:
    # The CLI looks its suite up in SUITES by the --suite name; the hot ones stand in while it runs.
    with mock.patch.dict(SUITES, {name: Hot(suite) for name, suite in SUITES.items()}):
        return cli.main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
