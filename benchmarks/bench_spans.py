"""Span decoding: qa_kernels.decode_spans against transformers' per-feature decoding.

transformers (5.x) decodes one feature at a time in numpy (``select_starts_ends`` ->
``decode_spans`` in ``pipelines/document_question_answering.py``): softmax, the dense S x S outer
product, triu/tril, a partial sort. On a GPU server it first needs the logits on the host, so its
provider here includes that copy. Ours decode the whole batch in one call where the logits are.

Workload: F features of S tokens laid out as a tokenizer does (CLS, a question, SEP, the context,
SEP, padding), random logits, top_k spans of at most max_answer_len tokens, score "prob" (the one
transformers computes); every provider's best spans are checked against transformers' first.

    python benchmarks/bench_spans.py                       # 64 x 384 and 64 x 512, top 20, here
    python benchmarks/bench_spans.py --csv build/bench/spans.csv

``run_spans_benchmark(...)`` returns the rows (one dict per provider and shape) for the
``qa-kernels bench`` command.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch

import qa_kernels
from qa_kernels import backend as qa_backend
from qa_kernels.bench.harness import Timer, environment, synchronize, time_interleaved


def make_features(num_features: int, seq_len: int, device: str, seed: int = 0):
    """``(start (F, S), end (F, S), context (F, S) bool)``: question of 8-30 tokens, context up to a
    random end (the last feature of each long example is short), padding after."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(num_features, seq_len, generator=g) * 4
    end = torch.randn(num_features, seq_len, generator=g) * 4
    context = torch.zeros(num_features, seq_len, dtype=torch.bool)
    for f in range(num_features):
        q = int(torch.randint(8, 31, (), generator=g)) if seq_len > 40 else 1
        stop = seq_len - 1 if f % 4 else int(torch.randint(q + 2, seq_len, (), generator=g))
        context[f, q + 2 : stop] = True
    return start.to(device), end.to(device), context.to(device)


def transformers_decode(start, end, context, top_k: int, max_answer_len: int):
    """transformers' way: host copy, then select_starts_ends per feature (CLS kept in the softmax)."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    start_np, end_np = start.cpu().numpy(), end.cpu().numpy()  # the host copy (a sync on CUDA)
    p_mask = (~context).cpu().numpy().astype(np.int64)
    p_mask[:, 0] = 0
    attention = np.ones((1, start_np.shape[1]), dtype=np.int64)
    results = []
    for f in range(start_np.shape[0]):
        results.append(
            select_starts_ends(
                start_np[f : f + 1],
                end_np[f : f + 1],
                p_mask[f : f + 1],
                attention,
                top_k=top_k,
                handle_impossible_answer=True,
                max_answer_len=max_answer_len,
            )
        )
    return results


def our_decode(backend: str, start, end, context, top_k: int, max_answer_len: int):
    with qa_kernels.use_backend(backend):
        return qa_kernels.decode_spans(start, end, context_mask=context, max_answer_len=max_answer_len, top_k=top_k)


def _our_backends(device: str) -> list[str]:
    if device == "cuda":
        return ["triton", "torch"]
    names = ["torch"]
    if qa_backend.native_available():
        names.insert(0, "native")
    return names


def _check_top1(out, reference) -> None:
    for f, (starts, ends, _, _) in enumerate(reference):
        got = (out.starts[f, 0].item(), out.ends[f, 0].item())
        if got != (int(starts[0]), int(ends[0])):
            raise AssertionError(f"feature {f}: best span {got}, transformers {(int(starts[0]), int(ends[0]))}")


def run_spans_benchmark(
    device: str | None = None,
    shapes: Sequence[tuple[int, int]] = ((64, 384), (64, 512)),
    top_k: int = 20,
    max_answer_len: int = 15,
    warmup_ms: float = 100.0,
    rep_ms: float = 1000.0,
) -> list[dict]:
    """One row per (shape, provider): median / p20 / p80 ms per batch, µs per feature, and the
    speed-up over transformers, with the device, load and versions."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    timer = Timer(device, warmup_ms, rep_ms)
    rows = []
    for num_features, seq_len in shapes:
        start, end, context = make_features(num_features, seq_len, device)
        reference = transformers_decode(start, end, context, top_k, max_answer_len)
        cases: dict[str, tuple[Callable[[], object], list]] = {
            "transformers": (lambda x=(start, end, context): transformers_decode(*x, top_k, max_answer_len), []),
        }
        for name in _our_backends(device):
            _check_top1(our_decode(name, start, end, context, top_k, max_answer_len), reference)

            def ours(name=name, x=(start, end, context)):
                out = our_decode(name, *x, top_k, max_answer_len)
                synchronize(device)
                return out

            cases[f"qa_kernels-{name}"] = (ours, [])
        stats = time_interleaved(cases, timer)
        base = stats["transformers"][0]
        for provider, (median, p20, p80) in stats.items():
            rows.append(
                dict(
                    suite="spans",
                    provider=provider,
                    device=device,
                    device_name=env.device_name,
                    features=num_features,
                    seq_len=seq_len,
                    top_k=top_k,
                    max_answer_len=max_answer_len,
                    median_ms=median,
                    p20_ms=p20,
                    p80_ms=p80,
                    us_per_feature=median * 1e3 / num_features,
                    speedup=base / median,
                    threads=env.threads,
                    load_avg=env.load_avg,
                    torch=env.torch,
                    triton=env.triton,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--seq", type=int, nargs="+", default=[384, 512], help="tokens per feature")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-answer-len", type=int, default=15)
    parser.add_argument("--rep-ms", type=float, default=1000.0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--csv", help="append the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_spans_benchmark(
        args.device, [(args.features, s) for s in args.seq], args.top_k, args.max_answer_len, rep_ms=args.rep_ms
    )
    print(f"{rows[0]['device_name']}, {rows[0]['threads']} threads, load average {rows[0]['load_avg']:.1f} "
          f"on {os.cpu_count()} cores, torch {rows[0]['torch']}, triton {rows[0]['triton']}")  # fmt: skip
    print(f"{'shape':>10} {'provider':>20} {'median ms':>10} {'p20':>8} {'p80':>8} {'us/feature':>11} {'speed-up':>9}")
    for r in rows:
        print(f"{r['features']:>4} x {r['seq_len']:<4} {r['provider']:>20} {r['median_ms']:>10.3f} {r['p20_ms']:>8.3f} "
              f"{r['p80_ms']:>8.3f} {r['us_per_feature']:>11.1f} {r['speedup']:>8.1f}x")  # fmt: skip
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
