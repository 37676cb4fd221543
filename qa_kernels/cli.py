"""The ``qa-kernels`` command."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa-kernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("selfcheck", help="check the fused head against the eager reference here")
    check.add_argument("--shape", type=int, nargs=3, metavar=("B", "S", "H"), help="default: per device")
    check.add_argument("--reps", type=int, help="timed repetitions (median reported)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "selfcheck":
        from . import selfcheck

        return 0 if selfcheck.run(tuple(args.shape) if args.shape else None, args.reps) else 1
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
