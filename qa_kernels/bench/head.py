"""The QA head suite: eager reference, torch.compile of it, and qa_kernels' Triton and native kernels.

Modes (what a training or serving step asks of the head):
  inference  logits only: no labels, no autograd graph (``torch.no_grad``)
  fwd        the training forward: labels given, loss computed, graph kept for the backward
  bwd        the backward alone, from the loss (``loss.backward()`` on a graph built beforehand)
  fwd+bwd    both: one training step's worth of head
  head-only  fwd+bwd with a frozen encoder: hidden needs no gradient, the head's weight and bias do

The loss is the only output a training step differentiates, so the backward starts from it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple, Optional

import torch

from .. import backend as qa_backend
from .. import reference
from ..ops.qa_head import qa_head
from .harness import available_providers, kernel_unavailable, rotation_sets

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# torch.compile of the reference: the strongest setting without CUDA graphs on GPU (CUDA graphs
# would also remove the launch gaps eager and Triton pay, a different comparison); default on CPU.
COMPILE_MODE = {"cuda": "max-autotune-no-cudagraphs", "cpu": None}

# The outputs whose error each mode reports (against the float64 reference on the same inputs).
# Not grad_bias: it is 0 in exact arithmetic (each valid row's softmax-minus-one-hot sums to 0), so
# its error relative to its own size is rounding noise over rounding noise; the tests bound it
# absolutely.
ERROR_OUTPUTS = {
    "inference": ("start_logits", "end_logits"),
    "fwd": ("start_logits", "end_logits", "loss"),
    "bwd": ("grad_hidden", "grad_weight"),
    "fwd+bwd": ("start_logits", "end_logits", "loss", "grad_hidden", "grad_weight"),
    "head-only": ("start_logits", "end_logits", "loss", "grad_weight"),
}
# What each mode computes: the logits only, a training step, or one with hidden frozen.
_KIND = {"inference": "inference", "fwd": "train", "bwd": "train", "fwd+bwd": "train", "head-only": "head-only"}


def moved_bytes(mode: str, shape: tuple[int, ...], dtype: str) -> int:
    """The floor: the fewest bytes ``mode`` must move through device memory.

    hidden ``(B, S, H)`` is the only large tensor. The logits ``(2, B, S)``, weight ``(2, H)``,
    positions and the per-row statistics are each under ``1/H`` of it (0.2% at H = 768) and are
    left out.

      inference  read hidden once
      fwd        read hidden once (the training forward also accumulates the weight's gradient)
      bwd        write grad_hidden (the weight's gradient came from the forward)
      fwd+bwd    read hidden + write grad_hidden
      head-only  read hidden once: nothing large is written

    bf16, B=32, S=384, H=1024, fwd+bwd: 2 * 25.2 MB = 50.3 MB, 17 us at an H100's 3.0 TB/s copy rate.
    """
    B, S, H = shape
    hidden = B * S * H * DTYPES[dtype].itemsize
    return {"inference": hidden, "fwd": hidden, "bwd": hidden, "fwd+bwd": 2 * hidden, "head-only": hidden}[mode]


class _Inputs(NamedTuple):
    hidden: torch.Tensor  # (B, S, H) leaf, requires grad
    weight: torch.Tensor  # (2, H) leaf, requires grad
    bias: torch.Tensor  # (2,) leaf, requires grad
    start: torch.Tensor  # (B,) int64
    end: torch.Tensor  # (B,) int64

    @property
    def leaves(self) -> list[torch.Tensor]:
        return [self.hidden, self.weight, self.bias]


def _make_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> _Inputs:
    B, S, H = shape
    # BERT's initializer range (std 0.02) for the head's parameters; hidden states of unit scale
    # (the encoder ends in a LayerNorm). Positions anywhere in the sequence.
    return _Inputs(
        torch.randn(B, S, H, device=device, dtype=dtype).requires_grad_(),
        (0.02 * torch.randn(2, H, device=device)).to(dtype).requires_grad_(),
        (0.02 * torch.randn(2, device=device)).to(dtype).requires_grad_(),
        torch.randint(0, S, (B,), device=device),
        torch.randint(0, S, (B,), device=device),
    )


def _outputs(head: Callable, x: _Inputs, context: Callable, kind: str) -> dict[str, torch.Tensor]:
    """One call on fresh leaves: the logits, and for a ``train`` or ``head-only`` kind the loss and
    the gradients."""
    # Leaves that require grad as in the timed calls (a compiled head sees the same guards and is
    # not compiled again).
    h, w, b = (t.detach().requires_grad_() for t in x.leaves)
    if kind == "head-only":
        h = h.detach()
    train = kind != "inference"
    with context(), torch.set_grad_enabled(train):
        out = head(h, w, b, x.start, x.end) if train else head(h, w, b)
        if train:
            out.loss.backward()
    values = {"start_logits": out.start_logits, "end_logits": out.end_logits}
    if train:
        values |= {"loss": out.loss, "grad_weight": w.grad, "grad_bias": b.grad}
    if kind == "train":
        values["grad_hidden"] = h.grad
    return {k: v.detach() for k, v in values.items()}


class HeadWorkload:
    """Inputs of one (shape, dtype), rotated so that no call finds them in the cache, and the
    providers' callables over them."""

    def __init__(
        self, shape: tuple[int, ...], dtype: str, device: str, providers: Sequence[str], cache_bytes: int
    ) -> None:
        self.device = device
        n_sets = rotation_sets(moved_bytes("inference", shape, dtype), cache_bytes)  # hidden, read by every mode
        self.sets = [_make_inputs(shape, DTYPES[dtype], device) for _ in range(n_sets)]
        self.heads: dict[str, Callable] = {}
        self.contexts: dict[str, Callable] = {}
        for p in providers:
            self.contexts[p] = contextlib.nullcontext
            if p == "eager":
                self.heads[p] = reference.qa_head
            elif p == "compile":
                self.heads[p] = self._compile(device)
            else:  # qa_kernels' op with that backend forced (forward and backward run inside it)
                self.heads[p] = qa_head
                self.contexts[p] = functools.partial(qa_backend.use_backend, p)
        self._exact: dict[str, dict[str, torch.Tensor]] = {}
        self._errors: dict[tuple[str, str], dict[str, float]] = {}

    def _compile(self, device: str) -> Callable:
        """torch.compile of the reference, compiled here (untimed) for the inference and training calls.

        The bwd mode runs ``backward(retain_graph=True)`` on graphs built beforehand, which a backward
        compiled with donated buffers refuses (checked at each backward call), so donated buffers are
        off while this workload lives. Donating only lets the backward reuse the memory of saved
        tensors, here the (B, S) logits' statistics: no change to the bytes moved.
        """
        import torch._functorch.config

        torch._dynamo.reset()  # fresh graphs for this shape; no recompile limit across a sweep
        self._restore_donated = torch._functorch.config.donated_buffer
        torch._functorch.config.donated_buffer = False
        head = torch.compile(reference.qa_head, mode=COMPILE_MODE[device], dynamic=False)
        for kind in ("inference", "train", "head-only"):
            _outputs(head, self.sets[0], contextlib.nullcontext, kind)
        return head

    def case(self, provider: str, mode: str) -> tuple[Callable[[], object], list[torch.Tensor]]:
        head, context = self.heads[provider], self.contexts[provider]
        order = itertools.cycle(self.sets)
        if mode == "inference":

            def fn():
                x = next(order)
                with torch.no_grad(), context():
                    return head(x.hidden, x.weight, x.bias)

        elif mode == "fwd":

            def fn():
                x = next(order)
                with context():
                    return head(*x)

        elif mode == "fwd+bwd":

            def fn():
                x = next(order)
                with context():
                    head(*x).loss.backward()

        elif mode == "head-only":

            def fn():
                x = next(order)
                with context():
                    head(x.hidden.detach(), x.weight, x.bias, x.start, x.end).loss.backward()

        elif mode == "bwd":
            with context():
                losses = itertools.cycle([head(*x).loss for x in self.sets])

            def fn():
                with context():
                    next(losses).backward(retain_graph=True)

        else:
            raise ValueError(f"unknown mode {mode!r}")
        return fn, [t for x in self.sets for t in x.leaves]

    def max_error(self, provider: str, mode: str) -> float:
        kind = _KIND[mode]
        if kind not in self._exact:
            x = self.sets[0]
            hidden, weight, bias = (t.detach().double() for t in x.leaves)
            exact = _Inputs(hidden, weight, bias, x.start, x.end)
            self._exact[kind] = _outputs(reference.qa_head, exact, contextlib.nullcontext, kind)
        if (provider, kind) not in self._errors:  # keep the errors, not the (possibly GB-sized) outputs
            got = _outputs(self.heads[provider], self.sets[0], self.contexts[provider], kind)
            self._errors[provider, kind] = {
                name: (
                    (value.double() - self._exact[kind][name]).abs().max() / self._exact[kind][name].abs().max()
                ).item()
                for name, value in got.items()
            }
        return max(self._errors[provider, kind][name] for name in ERROR_OUTPUTS[mode])

    def close(self) -> None:
        self.sets.clear()
        self._exact.clear()
        self._errors.clear()
        if "compile" in self.heads:
            torch._dynamo.reset()
            torch._functorch.config.donated_buffer = self._restore_donated


class HeadSuite:
    name = "head"
    dims: tuple[str, ...] = ("B", "S", "H")
    modes: tuple[str, ...] = ("inference", "fwd", "bwd", "fwd+bwd", "head-only")
    providers: tuple[str, ...] = ("eager", "compile", "triton", "native")
    baseline = "eager"
    dtypes: tuple[str, ...] = tuple(DTYPES)
    # bert-base and bert-large fine-tuned on SQuAD: batch 32, max_seq_length 384.
    presets: ClassVar[dict[str, tuple[int, ...]]] = {"bert-base": (32, 384, 768), "bert-large": (32, 384, 1024)}

    def unavailable(self, provider: str, device: str) -> Optional[str]:
        return kernel_unavailable(provider, device, "qa_head")

    def default_providers(self, device: str) -> list[str]:
        return available_providers(self, device)

    def default_shapes(self, device: str) -> list[tuple[int, ...]]:
        if device == "cuda":
            return list(self.presets.values())
        # CPU: the csrc issue's shapes, bert-base at batch 8 and bert-large at batch 32 (about 30 s on
        # 2 cores, measured at load 0.5).
        return [(8, 384, 768), (32, 384, 1024)]

    def default_dtypes(self, device: str) -> list[str]:
        return ["bf16"] if device == "cuda" else ["fp32"]

    def moved_bytes(self, mode: str, shape: tuple[int, ...], dtype: str) -> int:
        return moved_bytes(mode, shape, dtype)

    def workload(self, shape, dtype, device, providers, cache_bytes) -> HeadWorkload:
        return HeadWorkload(shape, dtype, device, providers, cache_bytes)
