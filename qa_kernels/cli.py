"""The qa-kernels command.

qa-kernels bench        time qa_kernels' kernels against eager PyTorch, torch.compile, transformers here,
                        with each result's error against a float64 reference
qa-kernels doctor       what is installed and built here, which implementation each op runs on each
                        device, and why a faster one is missing
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shlex
import sys
from typing import Optional


def _add_bench(sub) -> None:
    from .bench import SUITES
    from .bench.answer import BATCH_SIZES, ENV_VAR, MODELS, ROUNDS, TOP_K

    def per_suite(describe) -> str:
        return "; ".join(f"{name}: {describe(suite)}" for name, suite in SUITES.items())

    bench = sub.add_parser(
        "bench",
        help=BENCH_HELP,
        description="Times each provider in each mode at each shape and dtype, interleaving the "
        "providers, and prints the median time [p20, p80], the speed-up over the suite's baseline "
        f"({per_suite(lambda s: s.baseline)}), the achieved GB/s and its fraction of the device's copy "
        "bandwidth (measured in the same run), the peak memory (CUDA) and the error against the suite's "
        "reference. With no options: the suite's default shapes, every mode, every provider available "
        "on the device.",
    )
    bench.set_defaults(subparser=bench)  # its usage in the errors about its options
    bench.add_argument(
        "--suite", choices=list(SUITES), default="head",
        help="what to benchmark: head (the QA head), spans (span decoding) or answer (QuestionAnswerer against "
        "the question-answering pipeline, end to end; its own options below) (default: head)",
    )  # fmt: skip
    bench.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available, else cpu")
    bench.add_argument(
        "--shapes", nargs="+", metavar="SHAPE",
        help="the suite's dimensions joined by x, or preset names ("
        + per_suite(lambda s: f"{'x'.join(s.dims)} e.g. {'x'.join(map(str, next(iter(s.presets.values()))))}, "
                    f"or {', '.join(s.presets)}")
        + "); default: the suite's (head: smaller on CPU)",
    )  # fmt: skip
    bench.add_argument(
        "--dtypes", nargs="+", metavar="DTYPE", help="fp32, fp16, bf16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    bench.add_argument(
        "--providers", nargs="+", metavar="PROVIDER",
        help=f"{per_suite(lambda s: ', '.join(s.providers))} (default: those available; triton on CUDA only)",
    )  # fmt: skip
    bench.add_argument(
        "--modes", nargs="+", metavar="MODE", help=f"{per_suite(lambda s: ', '.join(s.modes))} (default: all)"
    )
    bench.add_argument(
        "--warmup-ms", type=float, metavar="MS", help="warm-up per case (default: 25 on CUDA, 30 on CPU)"
    )
    bench.add_argument(
        "--rep-ms", type=float, metavar="MS", help="timed runs per case (default: 100 on CUDA, 200 on CPU)"
    )
    bench.add_argument("--csv", metavar="PATH", help="write the results as CSV rows")
    bench.add_argument("--append", action="store_true", help="with --csv: add the rows to an existing file")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG of --plot-metric against the swept size")
    bench.add_argument("--plot-metric", choices=("gbps", "time"), default="gbps", help="default: gbps")
    bench.add_argument("--threads", type=int, metavar="N", help="CPU: torch's intra-op threads (default: torch's)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    answer = bench.add_argument_group(
        "answer suite", "N examples through each provider at each batch size; --shapes NxS: N examples, S "
        "tokens per feature (stride S // 3); no --warmup-ms, --rep-ms or --plot",
    )  # fmt: skip
    answer.add_argument(
        "--batch-sizes", nargs="+", type=int, metavar="B",
        help=f"features per forward pass, each provider at each (default: {' '.join(map(str, BATCH_SIZES))})",
    )  # fmt: skip
    answer.add_argument("--model", choices=list(MODELS), help="the random-init BERT's size (default: small)")
    answer.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"timed passes per provider and batch size, interleaved (default: {ROUNDS})",
    )
    answer.add_argument("--top-k", type=int, metavar="K", help=f"answers per example (default: {TOP_K})")
    answer.add_argument(
        "--pipeline-python", metavar="PATH",
        help=f"a Python with transformers 4.x, which runs the pipeline (default: ${ENV_VAR}, else this one if its "
        "transformers is 4.x; without one the comparison is skipped, saying why)",
    )  # fmt: skip


ANSWER_OPTIONS = ("batch_sizes", "model", "rounds", "top_k", "pipeline_python")


BENCH_HELP = "time eager, torch.compile, transformers and qa_kernels' kernels here; table, CSV, plot"


def _parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; bench's options (which describe the suites, and so import torch) only when
    ``command`` is bench: ``qa-kernels --help`` answers without importing torch."""
    parser = argparse.ArgumentParser(
        prog="qa-kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    if command == "bench":
        _add_bench(sub)
    else:
        sub.add_parser("bench", help=BENCH_HELP)
    doctor = sub.add_parser(
        "doctor",
        help="what is installed and built here, and which implementation each op runs",
        description="Prints the versions of what qa_kernels runs on, the native extension's state (what the "
        "install-time build recorded, which library loads, for which devices, and why not), Triton's, and "
        "which implementation each op runs on each device here. Compiles nothing unless --build.",
    )
    doctor.add_argument(
        "--build", action="store_true", help="load the native extension even if that means compiling it now"
    )
    return parser


def _bench(args: argparse.Namespace, command: str) -> int:
    import torch

    from . import bench
    from .bench import harness
    from .bench.harness import choose_values as _choose

    parser = args.subparser
    if args.suite == "answer":
        from .bench.answer import bench_command

        return bench_command(args, command)
    for option in ANSWER_OPTIONS:
        if getattr(args, option) is not None:
            parser.error(f"--{option.replace('_', '-')}: only with --suite answer")
    suite = bench.SUITES[args.suite]
    device = harness.choose_device(parser, args.device)
    shapes = harness.choose_shapes(parser, args.shapes, suite, device)
    dtypes = _choose(parser, "--dtypes", args.dtypes, suite.dtypes, suite.default_dtypes(device))
    modes = _choose(parser, "--modes", args.modes, suite.modes, list(suite.modes))
    providers = _choose(parser, "--providers", args.providers, suite.providers, suite.default_providers(device))
    for p in providers:
        reason = suite.unavailable(p, device)
        if reason:
            parser.error(f"--providers: {p} cannot run on {device}: {reason}")
    harness.check_append(parser, args.csv, args.append, harness.columns(suite), f"a {suite.name} run")
    if args.providers is None:  # say what the default set leaves out, and why
        for p in suite.providers:
            reason = suite.unavailable(p, device)
            if p not in providers and reason:
                print(f"note: provider {p} left out on {device}: {reason}", file=sys.stderr)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before the run, not after it
        parser.error("--plot: needs matplotlib, which is not installed (pip install 'qa-kernels[bench]')")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    for option in ("warmup_ms", "rep_ms"):
        if getattr(args, option) is not None and getattr(args, option) < 0:
            parser.error(f"--{option.replace('_', '-')}: must be >= 0; got {getattr(args, option)}")
    timer = bench.Timer(
        device,
        args.warmup_ms if args.warmup_ms is not None else (25 if device == "cuda" else 30),
        args.rep_ms if args.rep_ms is not None else (100 if device == "cuda" else 200),
    )

    torch.manual_seed(args.seed)
    env = bench.environment(device)
    bench.warn_if_loaded(env)
    rows: list[dict] = []
    interrupted = False
    try:
        for row in bench.measure(suite, env, shapes, dtypes, modes, providers, timer, progress=not args.no_progress):
            rows.append(row)
    except KeyboardInterrupt:  # Ctrl-C or `timeout -s INT`: report (and write) what was measured
        interrupted = True
        print(f"\ninterrupted: keeping the {len(rows)} rows measured so far", file=sys.stderr)
        if not rows:
            return 130

    title = f"qa-kernels bench ({suite.name}) on {env.describe()}"
    print(title)
    print(f"copy bandwidth {rows[0]['copy_gbps']:.1f} GB/s (read + write); command: {command}")
    print(bench.format_table(rows, suite))
    noisy = bench.noisy_rows(rows, suite)
    if noisy:
        print(f"warning: {len(noisy)} of {len(rows)} results spread wider than their median (p80 - p20 > "
              f"median): {'; '.join(noisy[:5])}{' ...' if len(noisy) > 5 else ''}; rerun them on a quieter "
              "machine or with a larger --rep-ms", file=sys.stderr)  # fmt: skip
    if args.csv:
        bench.write_csv(rows, args.csv, suite, append=args.append)
        print(f"wrote {args.csv}")
    if args.plot:
        bench.plot(rows, args.plot, suite, metric=args.plot_metric, title=f"{title}\n{command}")
        print(f"wrote {args.plot}")
    return 130 if interrupted else 0


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"
    except Exception as e:  # installed but broken: say how
        return f"does not import ({type(e).__name__}: {e})"


def _doctor(args: argparse.Namespace) -> int:
    import platform
    import warnings

    import torch

    from . import __version__, backend, native
    from ._env import triton_available, triton_interpreter_on
    from .bench.harness import cpu_name

    cuda = torch.cuda.is_available()
    sections: dict[str, dict[str, str]] = {
        "versions": {
            "qa_kernels": __version__,
            "python": f"{platform.python_version()} ({sys.executable})",
            "platform": platform.platform(),
            "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}, "
            f"{torch.get_num_threads()} CPU threads)",
            "triton": _version("triton"),
            "transformers": _version("transformers"),
            "numpy": _version("numpy"),
        },
        "devices": {"cpu": cpu_name()},
        "native extension": native.report(load=args.build),
        "triton": {
            "installed": "yes" if triton_available() else "no (pip install 'qa-kernels[triton]' on CPU)",
            "interpreter (CPU tensors)": "on" if triton_interpreter_on() else "off (TRITON_INTERPRET=1 turns it on)",
        },
    }
    if cuda:
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            sections["devices"][f"cuda:{i}"] = f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"
    choice: dict[str, str] = {"requested": f"{backend.get_backend()} ({backend.ENV_VAR}, set_backend, use_backend)"}
    compiles = not args.build and native.needs_compile()
    for device in ("cpu", "cuda") if cuda else ("cpu",):
        if device == "cpu" and compiles:
            choice["cpu"] = "native once the just-in-time build succeeds, else torch"
            continue
        try:
            with warnings.catch_warnings():  # the reason is printed above, not as a warning
                warnings.simplefilter("ignore")
                for op in backend.OPS:
                    choice[f"{op} on {device}"] = backend.resolve(op, device)
        except RuntimeError as e:
            choice[device] = f"error: {e}"
    sections["implementation that runs"] = choice
    for title, facts in sections.items():
        print(f"{title}:")
        width = max(map(len, facts))
        for key, value in facts.items():
            print(f"  {key:<{width}}  {value}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    command = next((a for a in arguments if not a.startswith("-")), None)
    args = _parser(command).parse_args(arguments)
    if args.command == "bench":
        return _bench(args, shlex.join(["qa-kernels", *arguments]))
    if args.command == "doctor":
        return _doctor(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
