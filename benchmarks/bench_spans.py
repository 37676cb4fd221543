"""Span decoding: qa_kernels.decode_spans against transformers' per-feature decoding.

``qa-kernels bench --suite spans`` (the suite is qa_kernels/bench/spans.py) with a longer timing
budget per case: 100 ms of warm-up and 1 s of timed calls instead of the CLI's CPU default of 30 and
200 ms, since transformers takes about 60 ms a call at 64 x 384 and 100 ms at 64 x 512 on one Xeon
core (a few samples a round at the default). Every option of ``qa-kernels bench`` is accepted, and
overrides these.

    python benchmarks/bench_spans.py                       # 64 x 384 and 64 x 512, top 20, here
    python benchmarks/bench_spans.py --threads 1 --csv build/bench/spans.csv
"""

from __future__ import annotations

import sys
from typing import Optional

from qa_kernels import cli

TIMING = ["--warmup-ms", "100", "--rep-ms", "1000"]


def main(argv: Optional[list[str]] = None) -> int:
    return cli.main(["bench", "--suite", "spans", *TIMING, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
