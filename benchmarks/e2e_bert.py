"""End to end: one training step of a BERT QA model, eager vs with the head through qa_kernels.

bert-base and bert-large at their real sizes (transformers.BertForQuestionAnswering, random init),
SQuAD batches (B=32, S=384), bf16 autocast with fp32 master weights on CUDA. A step is forward with
start/end positions, ``loss.backward()``, ``AdamW.step()`` and ``zero_grad``. Reported: the step's
time eager and patched, the head's time alone (fwd+bwd, on the hidden states the model hands it:
under autocast BERT's last LayerNorm gives float32, which the eager head casts to bf16), and the
head's share of the eager step. The two models are copies of one, timed interleaved with the
harness of `qa-kernels bench`.

The patched model is ``qa_kernels.patch(model)``.

Meant for a GPU. On CPU it runs a tiny BERT (2 layers, H=128, B=2, S=64) as a smoke test.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import sys

import torch
import transformers

import qa_kernels
from qa_kernels import reference
from qa_kernels.bench import Timer, environment
from qa_kernels.bench.harness import time_interleaved

CONFIGS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
}


def _step_fn(model, batch, device, autocast_dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _head_fns(hidden, weight, bias, start, end, device, autocast_dtype):
    """The head alone (fwd+bwd from the loss), eager and fused, on hidden states like the model's."""

    def make(head):
        def fn():
            with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = head(hidden, weight, bias, start, end).loss
            loss.backward()

        return fn

    leaves = [hidden, weight, bias]
    return {"eager": (make(reference.qa_head), leaves), "fused": (make(qa_kernels.qa_head), leaves)}


def run_model(name: str, B: int, S: int, device: str, timer: Timer, head_timer: Timer, autocast_dtype) -> dict:
    config = transformers.BertConfig(**CONFIGS[name], max_position_embeddings=max(512, S))
    eager = transformers.BertForQuestionAnswering(config).to(device).train()
    fused = qa_kernels.patch(copy.deepcopy(eager))
    batch = {
        "input_ids": torch.randint(0, config.vocab_size, (B, S), device=device),
        "attention_mask": torch.ones(B, S, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(B, S, dtype=torch.long, device=device),
        "start_positions": torch.randint(0, S, (B,), device=device),
        "end_positions": torch.randint(0, S, (B,), device=device),
    }
    # The hidden states the head sees: captured from one eager forward.
    seen = {}
    hook = eager.qa_outputs.register_forward_pre_hook(lambda module, args: seen.setdefault("hidden", args[0]))
    with torch.no_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        eager(**batch)
    hook.remove()
    hidden = torch.randn_like(seen["hidden"]).requires_grad_()
    weight, bias = (p.detach().clone().requires_grad_() for p in (eager.qa_outputs.weight, eager.qa_outputs.bias))

    steps = time_interleaved(
        {p: (_step_fn(m, batch, device, autocast_dtype), []) for p, m in (("eager", eager), ("fused", fused))}, timer
    )
    heads = time_interleaved(
        _head_fns(hidden, weight, bias, batch["start_positions"], batch["end_positions"], device, autocast_dtype),
        head_timer,
    )
    step_eager, step_fused = steps["eager"][0], steps["fused"][0]
    head_eager, head_fused = heads["eager"][0], heads["fused"][0]
    return {
        "model": name, "B": B, "S": S, "H": config.hidden_size,
        "precision": f"autocast {str(autocast_dtype).removeprefix('torch.')}" if autocast_dtype else "fp32",
        "head_input_dtype": str(hidden.dtype).removeprefix("torch."),
        "step_eager_ms": step_eager, "step_fused_ms": step_fused, "step_saved_ms": step_eager - step_fused,
        "head_eager_ms": head_eager, "head_fused_ms": head_fused, "head_saved_ms": head_eager - head_fused,
        "head_share_of_eager_step": head_eager / step_eager,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=sorted(CONFIGS), help="default: bert-base bert-large (CPU: tiny)"
    )
    parser.add_argument("--batch", type=int, help="B (default: 32; CPU: 2)")
    parser.add_argument("--seq", type=int, help="S (default: 384; CPU: 64)")
    parser.add_argument("--rep-ms", type=float, help="timed steps per variant (default: 3000 on CUDA, 2000 on CPU)")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    models = args.models or (["bert-base", "bert-large"] if cuda else ["tiny"])
    B, S = args.batch or (32 if cuda else 2), args.seq or (384 if cuda else 64)
    autocast_dtype = torch.bfloat16 if cuda else None
    # Steps take 0.1-0.5 s on a GPU: seconds of repetitions for ~10 samples. The head alone takes
    # ~0.1 ms: bench's default budget.
    timer = Timer(device, warmup_ms=300 if cuda else 200, rep_ms=args.rep_ms or (3000 if cuda else 2000))
    head_timer = Timer(device, warmup_ms=25 if cuda else 30, rep_ms=min(timer.rep_ms, 100 if cuda else 200))
    env = environment(device)
    torch.manual_seed(0)

    rows = [run_model(name, B, S, device, timer, head_timer, autocast_dtype) for name in models]
    print(f"one training step, eager vs fused head, on {env.describe()}")
    print(f"command: python benchmarks/e2e_bert.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print("fused: qa_kernels.patch(model); medians of interleaved runs")
    header = (
        f"{'model':10} {'B':>3} {'S':>4} {'H':>5} {'precision':16} {'step eager':>10} {'step fused':>10} "
        f"{'saved':>7} {'head eager':>10} {'head fused':>10} {'head share':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:10} {r['B']:>3} {r['S']:>4} {r['H']:>5} {r['precision']:16} {r['step_eager_ms']:>8.2f}ms "
            f"{r['step_fused_ms']:>8.2f}ms {r['step_saved_ms']:>5.2f}ms {r['head_eager_ms']:>8.3f}ms "
            f"{r['head_fused_ms']:>8.3f}ms {r['head_share_of_eager_step']:>10.2%}"
        )
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            fields = ["device", "torch", "transformers", *rows[0]]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {"device": env.device_name, "torch": env.torch, "transformers": transformers.__version__, **r}
                )
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
