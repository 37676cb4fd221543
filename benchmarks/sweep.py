"""The sweep: `qa-kernels bench` over the grid below, every mode and provider, fp16/bf16/fp32.

Writes benchmarks/results/<device>.csv and re-plots the whole file to <device>.png (so parts run
with --append end up in one plot). It only chooses shapes, dtypes and paths; timing, byte counts,
errors and reporting are the harness's (qa_kernels/bench/). Any other option goes to `qa-kernels
bench` unchanged (--providers, --modes, --rep-ms, --append, ...).

Meant for a GPU. One call per dtype fits a 10-minute device call for eager/triton/native (48 shapes
x 4 modes x 3 providers, ~0.2 s a case); torch.compile with max-autotune adds tens of seconds of
autotuning per shape, so give it its own calls on fewer shapes:

    python benchmarks/sweep.py --dtypes bf16 --providers eager triton native
    python benchmarks/sweep.py --dtypes fp16 --providers eager triton native --append
    python benchmarks/sweep.py --dtypes fp32 --providers eager triton native --append
    python benchmarks/sweep.py --dtypes bf16 --providers compile --shapes bert-base bert-large --append

On CPU, `--smoke` runs a small grid in fp32 (a few minutes): the sweep's plumbing, not a GPU's numbers,
so it writes under build/sweep-smoke/ (not benchmarks/results/) unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

from qa_kernels import cli
from qa_kernels.bench import SUITES, environment, plot, read_csv

GRID = {"B": (1, 8, 32, 64), "S": (128, 384, 512, 4096), "H": (768, 1024, 4096)}
SMOKE_GRID = {"B": (1, 4), "S": (128, 384), "H": (768, 1024)}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SMOKE_OUT = os.path.join("build", "sweep-smoke")  # a smoke run's numbers are not results to commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other options are passed to `qa-kernels bench` (see qa-kernels bench --help).",
    )
    parser.add_argument("--smoke", action="store_true", help="the small grid in fp32 (a CPU smoke test)")
    parser.add_argument("--shapes", nargs="+", metavar="SHAPE", help="instead of the grid")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE", help="default: bf16 fp16 fp32 (--smoke: fp32)")
    parser.add_argument(
        "--out", metavar="DIR", help=f"default: benchmarks/results (--smoke: {SMOKE_OUT}, never the committed results)"
    )
    parser.add_argument("--name", help="file stem (default: the device, e.g. nvidia-h100-80gb-hbm3)")
    args, rest = parser.parse_known_args(argv)

    grid = SMOKE_GRID if args.smoke else GRID
    shapes = args.shapes or ["x".join(map(str, shape)) for shape in itertools.product(*grid.values())]
    dtypes = args.dtypes or (["fp32"] if args.smoke else ["bf16", "fp16", "fp32"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = args.out or (SMOKE_OUT if args.smoke else RESULTS)
    stem = os.path.join(out, args.name or environment(device).slug)
    bench_argv = ["bench", "--shapes", *shapes, "--dtypes", *dtypes, "--csv", f"{stem}.csv", *rest]
    code = cli.main(bench_argv)
    if code == 0:
        replot(
            f"{stem}.csv",
            f"{stem}.png",
            " ".join(["python benchmarks/sweep.py", *(sys.argv[1:] if argv is None else argv)]),
        )
        print(f"wrote {stem}.png")
    return code


def replot(csv_path: str, png_path: str, command: str) -> None:
    """Plots every row of ``csv_path`` (all the parts appended to it), titled from the rows themselves."""
    rows = read_csv(csv_path)
    first = rows[0]
    title = f"qa-kernels bench (head) on {first['device']}, torch {first['torch']}, triton {first['triton']}"
    if str(first["device"]).startswith("cpu"):
        loads = [r["load_avg"] for r in rows]
        title += f"; {first['threads']} thread(s), load average {min(loads):.1f}-{max(loads):.1f}"
    plot(rows, png_path, SUITES["head"], title=f"{title}\n{command}")


if __name__ == "__main__":
    sys.exit(main())
