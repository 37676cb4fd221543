"""What every benchmark suite shares: the device and its copy bandwidth, timing, results, table, CSV, plot.

A *suite* (``head.py``, ``spans.py``) says what to run: its shape dimensions, modes, providers
(one of them the baseline that speed-ups are over), the bytes each mode must move, and a workload
per (shape, dtype) that hands out one callable per (provider, mode) plus its error against the
suite's reference. This module times those callables the same way for every suite:

- Providers are interleaved: each (shape, dtype, mode) is timed in ``ROUNDS`` rounds, every provider
  once per round, and the raw times of the rounds are pooled, so a burst of load on a shared machine
  lands on every provider rather than on one.
- CUDA: ``triton.testing.do_bench`` (CUDA events around each call, the L2 cleared before each call,
  ``grad_to_none`` so every rep starts with fresh gradients). CPU: the same recipe with
  ``torch.utils.benchmark.Timer.timeit`` for the warm-up and the estimate, then ``timeit`` for one
  call per sample with the gradients reset in its untimed setup (:meth:`Timer._cpu` says why both).
- The summary is the quantiles ``QUANTILES`` = (median, p20, p80) of the pooled times, computed
  the way ``do_bench(quantiles=...)`` computes them (``torch.quantile``).
- Achieved bandwidth = the suite's byte count for the mode / median time, also given as a fraction
  of the device's copy bandwidth, measured in the same run (:func:`copy_bandwidth_gbps`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import sys
import time
import timeit
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Optional, Protocol

import torch
import torch.utils.benchmark as benchmark

QUANTILES = (0.5, 0.2, 0.8)  # median, p20, p80
ROUNDS = 3  # interleaving rounds per (shape, dtype, mode)

# The device-to-device copy that measures the bandwidth ceiling, counted as read + write: at least
# this many bytes and 4x the last-level cache (H100 L2: 50 MB; H200: 60 MB; server CPUs' L3: tens
# to hundreds of MB, shared with other tenants on a VM). On CPU, a copy also reads each destination
# line before writing it (write-allocate), so a kernel that mostly reads can beat "100% of copy".
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 28}

# Input sets are rotated until the inputs held (read by every call) add up to this many times the
# last-level cache, so that a call never finds its inputs left in the cache by an earlier call
# (do_bench also clears the L2 before each call on CUDA; the rotation keeps the CPU loop honest
# too), within a memory budget and a count: past those a shape is tiny enough (under 2x the cache
# over MAX_INPUT_SETS, e.g. 128 KB for a 32 MB cache) that its time is mostly per-call overhead.
ROTATE_CACHE_MULTIPLE = 2
ROTATION_BUDGET_BYTES = 2 << 30
MAX_INPUT_SETS = 512


def rotation_sets(set_bytes: int, cache_bytes: int) -> int:
    """How many input sets of ``set_bytes`` each (what one call reads) to rotate through."""
    wanted = math.ceil(ROTATE_CACHE_MULTIPLE * cache_bytes / max(set_bytes, 1))
    return max(1, min(wanted, MAX_INPUT_SETS, ROTATION_BUDGET_BYTES // max(set_bytes, 1)))


Fn = Callable[[], object]


def kernel_unavailable(provider: str, device: str, op: str) -> Optional[str]:
    """Why qa_kernels' ``triton`` or ``native`` provider of ``op`` cannot run on ``device`` (the
    registry's answer; ``None`` when it can, or for any other provider)."""
    from .. import backend as qa_backend

    return qa_backend.unavailable(op, provider, device) if provider in ("triton", "native") else None


def available_providers(suite: Suite, device: str) -> list[str]:
    """A suite's default providers on ``device``: every one that can run, but Triton on CPU (its
    interpreter is a correctness tool, far too slow to time by default)."""
    skip = {"triton"} if device == "cpu" else set()
    return [p for p in suite.providers if p not in skip and suite.unavailable(p, device) is None]


class Workload(Protocol):
    """One (shape, dtype) of a suite: its inputs, made once, and the callables that time them."""

    def case(self, provider: str, mode: str) -> tuple[Fn, list[torch.Tensor]]:
        """``(fn, grad_to_none)``: ``fn()`` runs ``mode`` once with ``provider`` on the next input set;
        ``grad_to_none`` are the leaves whose ``.grad`` is reset before each timed call."""

    def max_error(self, provider: str, mode: str) -> float:
        """The mode's error against the suite's reference, 0.0 when exact; each suite documents its
        measure (head: max |out - ref| / max |ref| against float64)."""

    def close(self) -> None:
        """Frees what the workload holds (inputs, compiled graphs)."""


class Suite(Protocol):
    name: str
    dims: tuple[str, ...]  # names of the shape's dimensions, CSV columns: ("B", "S", "H")
    modes: tuple[str, ...]
    providers: tuple[str, ...]
    baseline: str  # the provider that speed-ups are over: "eager"
    dtypes: tuple[str, ...]
    presets: ClassVar[dict[str, tuple[int, ...]]]  # named shapes accepted by --shapes

    def unavailable(self, provider: str, device: str) -> Optional[str]:
        """Why ``provider`` cannot run on ``device``, or ``None`` when it can."""

    def default_providers(self, device: str) -> list[str]: ...

    def default_shapes(self, device: str) -> list[tuple[int, ...]]: ...

    def default_dtypes(self, device: str) -> list[str]: ...

    def moved_bytes(self, mode: str, shape: tuple[int, ...], dtype: str) -> int:
        """The fewest bytes ``mode`` must move through device memory (the floor's numerator)."""

    def workload(
        self, shape: tuple[int, ...], dtype: str, device: str, providers: Sequence[str], cache_bytes: int
    ) -> Workload: ...


# --------------------------------------------------------------------------------------------------
# The machine


@dataclass(frozen=True)
class Environment:
    device: str  # "cuda" or "cpu"
    device_name: str  # "NVIDIA H100 80GB HBM3", "cpu: Intel(R) Xeon(R) ..."
    torch: str
    triton: str
    threads: int  # torch's intra-op threads (CPU)
    load_avg: float  # the 1-minute load average when the run started (CPU machines are shared)
    cache_bytes: int  # the last-level cache: CUDA L2, or the CPU's L3

    @property
    def slug(self) -> str:
        """A file name for this device: ``nvidia-h100-80gb-hbm3``, ``cpu-intel-r-xeon-r-...``."""
        return re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-")

    def describe(self) -> str:
        if self.device == "cuda":
            return f"{self.device_name}, torch {self.torch}, triton {self.triton}"
        threads = f"{self.threads} thread{'s' * (self.threads != 1)}"
        load = f"load average {self.load_avg:.1f} on {os.cpu_count()} cores"
        return f"{self.device_name} ({threads}; {load}), torch {self.torch}, triton {self.triton}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_cache_bytes() -> int:
    """The last-level cache from sysfs (``32M``, ``1024K``), 32 MiB when it cannot be read."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            break
        best = max(best, int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return best or 32 << 20


def environment(device: str) -> Environment:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "-"
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        name, cache = props.name, props.L2_cache_size
    else:
        name, cache = f"cpu: {cpu_name()}", _cpu_cache_bytes()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return Environment(device, name, torch.__version__, triton_version, torch.get_num_threads(), load, cache)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------
# Timing


@dataclass(frozen=True)
class Timer:
    """Times one callable and returns the raw per-call times in ms (no summary: rounds are pooled)."""

    device: str
    warmup_ms: float
    rep_ms: float

    def __call__(self, fn: Fn, grad_to_none: Sequence[torch.Tensor] = ()) -> list[float]:
        if self.device == "cuda":
            from triton.testing import do_bench

            return do_bench(
                fn, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=list(grad_to_none), return_mode="all"
            )
        return self._cpu(fn, grad_to_none)

    def _cpu(self, fn: Fn, grad_to_none: Sequence[torch.Tensor]) -> list[float]:
        """Per-call times on the host clock, with ``do_bench``'s recipe: a first call (compilation,
        allocations), an estimate from five calls, ``warmup_ms / estimate`` warm-up calls, then
        ``rep_ms / estimate`` timed calls.

        The warm-up and the estimate are ``torch.utils.benchmark.Timer.timeit`` (the mean of its
        Measurement; each ``timeit`` first makes ``max(number // 100, 2)`` calls of its own). The
        timed calls are ``timeit.Timer(fn, setup=reset).repeat(n, number=1)``: one call per sample,
        the gradients reset before it in the untimed setup, the garbage collector off while it runs.
        torch's Timer wraps that same ``timeit.Timer`` but cannot give one sample per call, each
        after its own reset: its ``timeit`` adds those calls before every measurement, and
        ``blocked_autorange`` times blocks of calls and runs the setup once per block, so within a
        block the gradients accumulate (an extra read and write of each: harmless in a warm-up, not
        in a sample).
        """

        def reset() -> None:
            for t in grad_to_none:
                t.grad = None

        warmup = benchmark.Timer(
            stmt="fn()",
            setup="reset()",
            globals={"fn": fn, "reset": reset},
            timer=time.perf_counter,  # its default also synchronizes an accelerator when one is present
            num_threads=torch.get_num_threads(),  # its default is 1 thread
        )
        estimate_ms = warmup.timeit(5).mean * 1e3
        warmup.timeit(int(self.warmup_ms / estimate_ms))
        n = max(1, int(self.rep_ms / estimate_ms))
        return [s * 1e3 for s in timeit.Timer(fn, setup=reset, timer=time.perf_counter).repeat(n, number=1)]


def summarize(times_ms: Sequence[float]) -> tuple[float, float, float]:
    """``(median, p20, p80)`` in ms, as ``do_bench(quantiles=QUANTILES)`` computes them."""
    q = torch.quantile(torch.tensor(times_ms, dtype=torch.float64), torch.tensor(QUANTILES, dtype=torch.float64))
    median, p20, p80 = q.tolist()
    return median, p20, p80


def time_interleaved(
    cases: dict[str, tuple[Fn, list[torch.Tensor]]], timer: Timer, rounds: int = ROUNDS
) -> dict[str, tuple[float, float, float]]:
    """Times every provider's case in ``rounds`` rounds (each round: each provider in turn, with a
    ``1 / rounds`` share of the repetition time) and summarizes each provider's pooled times."""
    share = Timer(timer.device, timer.warmup_ms / rounds, timer.rep_ms / rounds)
    pooled: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, grads) in cases.items():
            pooled[name] += share(fn, grads)
    return {name: summarize(times) for name, times in pooled.items()}


def copy_bandwidth_gbps(timer: Timer, cache_bytes: int) -> float:
    """The device's copy bandwidth in GB/s: bytes read + bytes written by a large ``copy_``, over its
    median time. The ceiling a memory-bound kernel's GB/s is compared with."""
    n = max(COPY_BYTES[timer.device], 4 * cache_bytes) // 4
    src = torch.randn(n, device=timer.device)  # random, never zeros
    dst = torch.empty_like(src)
    median_ms, _, _ = summarize(timer(lambda: dst.copy_(src)))
    return 2 * src.nbytes / median_ms / 1e6


def peak_memory_mb(fn: Fn, device: str) -> Optional[float]:
    """Extra device memory one call of ``fn`` needs at its peak (MB, above what was allocated before the
    call: the inputs are not counted). CUDA only (``torch.cuda.max_memory_allocated``); ``None`` on
    CPU, where torch keeps no such count."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e6


# --------------------------------------------------------------------------------------------------
# Running a suite


def speedup_column(suite: Suite) -> str:
    return f"speedup_vs_{suite.baseline}"


def columns(suite: Suite) -> list[str]:
    return [
        "suite", "device", "torch", "triton", "threads", "load_avg", "dtype", *suite.dims, "mode", "provider",
        "median_ms", "p20_ms", "p80_ms", speedup_column(suite), "moved_mb", "gbps", "copy_gbps",
        "floor_fraction", "peak_mem_mb", "max_err",
    ]  # fmt: skip


def measure(
    suite: Suite,
    env: Environment,
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str],
    modes: Sequence[str],
    providers: Sequence[str],
    timer: Timer,
    progress: bool = True,
) -> Iterator[dict]:
    """Measures every (shape, dtype, mode, provider): one result row (a dict, :func:`columns`) each,
    yielded as soon as its (shape, dtype, mode) is measured, so that a caller interrupted half-way
    keeps what was measured (``list(measure(...))`` for all of them)."""
    from tqdm.auto import tqdm

    copy_gbps = copy_bandwidth_gbps(timer, env.cache_bytes)
    total = len(shapes) * len(dtypes) * len(modes) * len(providers)
    with tqdm(total=total, desc=f"bench {suite.name}", unit="case", disable=not progress) as bar:
        for shape in shapes:
            for dtype in dtypes:
                bar.set_postfix_str(f"{'x'.join(map(str, shape))} {dtype}")
                work = suite.workload(shape, dtype, env.device, providers, env.cache_bytes)
                try:
                    for mode in modes:
                        cases = {p: work.case(p, mode) for p in providers}
                        # Untimed first calls: compilation, the error check, the memory peak.
                        errors = {p: work.max_error(p, mode) for p in providers}
                        peaks = {p: peak_memory_mb(cases[p][0], env.device) for p in providers}
                        timings = time_interleaved(cases, timer)
                        moved = suite.moved_bytes(mode, shape, dtype)
                        base = timings.get(suite.baseline)
                        for p in providers:
                            median, p20, p80 = timings[p]
                            gbps = moved / median / 1e6
                            yield (
                                {
                                    "suite": suite.name, "device": env.device_name, "torch": env.torch,
                                    "triton": env.triton, "threads": env.threads, "load_avg": round(env.load_avg, 2),
                                    "dtype": dtype, **dict(zip(suite.dims, shape, strict=True)),
                                    "mode": mode, "provider": p,
                                    "median_ms": median, "p20_ms": p20, "p80_ms": p80,
                                    speedup_column(suite): base[0] / median if base else None,
                                    "moved_mb": moved / 1e6, "gbps": gbps, "copy_gbps": copy_gbps,
                                    "floor_fraction": gbps / copy_gbps, "peak_mem_mb": peaks[p],
                                    "max_err": errors[p],
                                }
                            )  # fmt: skip
                        bar.update(len(providers))
                finally:
                    work.close()


# --------------------------------------------------------------------------------------------------
# Reporting


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(rows: Iterable[dict], suite: Suite) -> str:
    """The results as a fixed-width text table, one line per row."""
    rows = list(rows)
    vs = f"vs {suite.baseline}"
    pw, sw = max([8, *(len(r["provider"]) for r in rows)]), max(8, len(vs))  # provider, speed-up widths
    header = (
        f"{'shape':>15} {'dtype':5} {'mode':9} {'provider':{pw}} {'median ms':>10} {'[p20, p80]':>19} "
        f"{vs:>{sw}} {'GB/s':>8} {'of copy':>7} {'peak MB':>8} {'max err':>8}"
    )
    lines = [header, "-" * len(header)]
    previous = None
    for r in rows:
        shape = "x".join(str(r[d]) for d in suite.dims)
        key = (shape, r["dtype"], r["mode"])
        if previous is not None and key[:2] != previous[:2]:
            lines.append("")
        previous = key
        spread = f"[{_fmt(r['p20_ms'], '.4g')}, {_fmt(r['p80_ms'], '.4g')}]"
        ratio = r[speedup_column(suite)]
        speedup = _fmt(ratio, ".2f") + ("x" if ratio is not None else "")
        lines.append(
            f"{shape:>15} {r['dtype']:5} {r['mode']:9} {r['provider']:{pw}} {r['median_ms']:>10.4g} {spread:>19} "
            f"{speedup:>{sw}} {r['gbps']:>8.1f} {r['floor_fraction']:>7.1%} {_fmt(r['peak_mem_mb'], '.1f'):>8} "
            f"{_fmt(r['max_err'], '.1e'):>8}"
        )
    return "\n".join(lines)


def csv_appendable(path: str, fields: Sequence[str], what: str) -> bool:
    """Whether ``path`` exists with rows to append to; ValueError when its header is not ``fields``
    (the columns that ``what``, e.g. "a head run", writes). Checked before a run, so that it does
    not fail after it."""
    if not (os.path.exists(path) and os.path.getsize(path) > 0):
        return False
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    if header != list(fields):
        raise ValueError(
            f"--append: {path} has other columns than {what} writes: {header} (expected {list(fields)}); "
            "give another --csv path, or leave out --append to overwrite it"
        )
    return True


def write_rows(rows: Sequence[dict], path: str, fields: Sequence[str], what: str, append: bool = False) -> None:
    """Writes the rows (with a header of ``fields``) to ``path``, ``None`` as an empty cell; ``append``
    adds them to an existing file of the same columns instead (see :func:`csv_appendable`)."""
    exists = append and csv_appendable(path, fields, what)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a" if exists else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        if not exists:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def noisy_rows(rows: Sequence[dict], suite: Suite) -> list[str]:
    """The results whose p20-p80 spread is wider than their median, described (dims, dtype, mode,
    provider): noise a reader would otherwise take for a result."""
    return [
        f"{'x'.join(str(r[d]) for d in suite.dims)} {r['dtype']} {r['mode']} {r['provider']}"
        for r in rows
        if r["p80_ms"] - r["p20_ms"] > r["median_ms"]
    ]


def write_csv(rows: Sequence[dict], path: str, suite: Suite, append: bool = False) -> None:
    """:func:`write_rows` for a suite's rows."""
    write_rows(rows, path, columns(suite), f"a {suite.name} run", append)


def read_csv(path: str) -> list[dict]:
    """Rows written by :func:`write_csv`, numbers parsed back (empty cells -> ``None``)."""

    def parse(value: str):
        if value == "":
            return None
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


PLOT_METRICS = {"gbps": "achieved GB/s", "time": "median time (ms)"}


def plot(rows: Sequence[dict], path: str, suite: Suite, metric: str = "gbps", title: str = "") -> None:
    """A PNG: ``metric`` against the swept size (the bytes the mode must move), one panel per mode,
    one line per provider and dtype; the measured copy bandwidth as a dashed line on GB/s panels."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.ticker import FuncFormatter

    modes = [m for m in suite.modes if any(r["mode"] == m for r in rows)]
    providers = [p for p in suite.providers if any(r["provider"] == p for r in rows)]
    dtypes = sorted({r["dtype"] for r in rows})
    ncols = min(2, len(modes))
    nrows = math.ceil(len(modes) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    styles = ["-", "--", ":", "-."]
    for ax, mode in zip(axes, modes, strict=False):  # spare axes hidden below
        for i, provider in enumerate(providers):
            for j, dtype in enumerate(dtypes):
                points = sorted(
                    (r["moved_mb"], r["gbps"] if metric == "gbps" else r["median_ms"])
                    for r in rows
                    if r["mode"] == mode and r["provider"] == provider and r["dtype"] == dtype
                )
                if points:
                    x, y = zip(*points, strict=True)
                    label = provider if len(dtypes) == 1 else f"{provider} {dtype}"
                    ax.plot(x, y, styles[j % len(styles)], marker="o", ms=3, color=f"C{i}", label=label)
        if metric == "gbps":
            copy = [r["copy_gbps"] for r in rows if r["mode"] == mode]
            ax.axhline(sum(copy) / len(copy), color="gray", ls="--", lw=1, label="copy bandwidth")
        else:
            ax.set_yscale("log")
        ax.set_xscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not 10^x, on log axes
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.1g}"[0] in "25" else ""))
        ax.set_title(mode)
        ax.set_xlabel("bytes the mode must move (MB, log)")
        ax.set_ylabel(PLOT_METRICS[metric])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(modes) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize="medium")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


# The command line's option checks, shared by the suites' commands (qa_kernels/cli.py, answer.py).
def parse_shape(text: str, suite) -> tuple[int, ...]:
    """A --shapes value: the suite's dimensions joined by x, or one of its presets (ValueError otherwise)."""
    if text in suite.presets:
        return suite.presets[text]
    parts = text.lower().split("x")
    if len(parts) == len(suite.dims) and all(p.isdigit() and int(p) > 0 for p in parts):
        return tuple(int(p) for p in parts)
    example = "x".join(str(n) for n in next(iter(suite.presets.values())))
    raise ValueError(
        f"{text!r} is neither {'x'.join(suite.dims)} ({len(suite.dims)} positive integers, e.g. {example}) "
        f"nor a preset ({', '.join(suite.presets)})"
    )


def choose_values(parser, option: str, given: Optional[list[str]], allowed: tuple[str, ...], default: list[str]):
    """The values given for ``option`` (each checked against ``allowed``, duplicates dropped) or the default."""
    if given is None:
        return default
    for value in given:
        if value not in allowed:
            parser.error(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return list(dict.fromkeys(given))


def choose_device(parser: argparse.ArgumentParser, requested: Optional[str]) -> str:
    """--device: the one asked for (refused when torch cannot use it), else cuda where torch sees
    one, else cpu."""
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device: cuda was asked for but torch sees no CUDA device")
    return device


def choose_shapes(
    parser: argparse.ArgumentParser, requested: Optional[list[str]], suite, device: str
) -> list[tuple[int, ...]]:
    """--shapes: each value parsed (:func:`parse_shape`), else the suite's defaults for the device."""
    try:
        return [parse_shape(s, suite) for s in requested] if requested else suite.default_shapes(device)
    except ValueError as e:
        parser.error(f"--shapes: {e}")


def check_append(
    parser: argparse.ArgumentParser, csv_path: Optional[str], append: bool, fields: Sequence[str], what: str
) -> None:
    """--append: only with --csv, onto a file of the same columns (see :func:`csv_appendable`);
    checked before the run, so that it does not fail after it."""
    if append and not csv_path:
        parser.error("--append: only with --csv PATH")
    if append and csv_path:
        try:
            csv_appendable(csv_path, fields, what)
        except ValueError as e:
            parser.error(str(e))


def warn_if_loaded(env: Environment) -> None:
    """A warning on stderr when the load average exceeds the core count: other work competes with
    the timings."""
    cores = os.cpu_count() or 1
    if env.load_avg > cores:
        print(f"warning: the load average is {env.load_avg:.1f} on {cores} cores: other work competes with "
              "the timings; read them as noisy", file=sys.stderr)  # fmt: skip
