"""A patched transformers model in the places a user trains it: an AdamW loop (fp32 and CPU bf16
autocast), transformers' Trainer, torch.compile, autocast, and two processes on gloo:
DistributedDataParallel, FSDP2 (fully_shard) and Trainer launched with torchrun.

Every test compares the patched model with an eager twin (same seed, same data). The training
runs use the default backend (native or torch on CPU): the head's math is held to every backend in
tests/integrations/test_hf_patch.py; here the question is whether the integration trains like eager.

Three parameter groups of a BERT QA model have a gradient that is exactly 0 in exact arithmetic
(qa_outputs.bias and the last LayerNorm's bias, because each row's softmax - onehot sums to 0; the
attention key biases, because softmax is shift-invariant), so what they receive is rounding noise,
and AdamW, which divides by the gradient's own scale, turns noise into steps of up to lr. Any two
float implementations of the same model drift apart on exactly these parameters (none of which
changes the loss), by a random walk of lr-sized steps. Their final values therefore say nothing
about the fused path: AdamW moves a parameter by at most about lr per step whatever its gradient,
right or wrong, so a drift bound loose enough for the walk (2 * lr * steps) cannot fail. Instead
their gradient is checked at every step of every run: it must stay at rounding-noise level relative
to the step's largest gradient (a wrong head backward, e.g. d_logits rows that do not sum to 0,
puts a real gradient there). All other parameters are compared with eager at the end, tightly.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import qa_kernels
from qa_kernels.integrations import hf
from tests.models import (
    BATCH,
    LR,
    N_EXAMPLES,
    STEPS,
    S,
    SpanDataset,
    assert_grads_match,
    bert,
    make_inputs,
    positions,
    span_dataset,
    twin,
)  # fmt: skip
from tests.utils import TOLERANCE, assert_close

transformers = pytest.importorskip("transformers")


def zero_gradient_parameter(name: str, num_layers: int = 2) -> bool:
    """The parameters whose gradient is 0 in exact arithmetic (see the module docstring)."""
    last_ln = f"encoder.layer.{num_layers - 1}.output.LayerNorm.bias"
    return name == "qa_outputs.bias" or name.endswith(last_ln) or name.endswith("attention.self.key.bias")


def record_gradient_maxima(model: torch.nn.Module) -> dict[str, list[float]]:
    """max |grad| of every parameter at every backward, in order (one entry per step), recorded by
    a post-accumulate-grad hook (so it also works inside Trainer, before clipping and the step)."""
    maxima: dict[str, list[float]] = {name: [] for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, seen=maxima[name]: seen.append(p.grad.abs().max().item()))
    return maxima


# The zero-gradient parameters' gradient at each step, as a fraction of that step's largest gradient
# (see the module docstring). Measured with the native and torch backends: fp32 <= 1.2e-7 on both
# sides; under CPU bf16 autocast eager's qa_outputs.bias reaches 7e-4 (eager rounds d_logits to bf16
# before summing them) and the key biases 7e-6 (bf16 backbone). The fused op sums d_logits in fp32
# in either precision, so the patched model's qa_outputs.bias is held to fp32's bound always
# (measured <= 1.3e-7). A head backward that drops one row's start onehot (loss value unchanged)
# gives 3e-3 at step 0, while a bound on the final drift (2 * lr * steps = 0.18) would pass it (0.09).
ZERO_GRAD_NOISE = {"fp32": 1e-6, "bf16_autocast": 1e-3}
FUSED_HEAD_BIAS_NOISE = 1e-6


def assert_zero_gradients_stay_noise(maxima: dict[str, list[float]], precision: str, *, fused: bool) -> None:
    """At every step, every zero-gradient parameter's gradient within the rounding-noise bound."""
    steps = len(maxima["qa_outputs.bias"])
    assert steps > 0 and all(len(v) == steps for v in maxima.values()), "one gradient per parameter per step"
    for step in range(steps):
        largest = max(v[step] for v in maxima.values())
        assert largest > 0
        for name, values in maxima.items():
            if not zero_gradient_parameter(name):
                continue
            noise = FUSED_HEAD_BIAS_NOISE if fused and name == "qa_outputs.bias" else ZERO_GRAD_NOISE[precision]
            ratio = values[step] / largest
            side = "patched" if fused else "eager"
            assert ratio <= noise, f"{side}, step {step}: grad of {name} is {ratio:.3g} x the largest (> {noise:g})"


def assert_params_match(fused: dict, eager: dict, tol: float, *, per_tensor: bool = True) -> None:
    """Final parameters but the zero-gradient ones (their gradients are checked per step): each
    tensor within ``tol`` of its own max (``per_tensor``), or all of them together within ``tol`` in
    relative L2 norm."""
    assert list(fused) == list(eager)
    tracked = [name for name in eager if not zero_gradient_parameter(name)]
    assert len(tracked) < len(eager) and "qa_outputs.weight" in tracked
    if per_tensor:
        for name in tracked:
            assert_close(fused[name], eager[name], tol, name)
    else:
        diff = torch.cat([(fused[n] - eager[n]).flatten() for n in tracked]).norm().item()
        norm = torch.cat([eager[n].flatten() for n in tracked]).norm().item()
        assert diff <= tol * norm, f"parameters: |fused - eager| {diff:.3g} > {tol:g} x |eager| {norm:.3g}"


def train_loop(patched: bool, autocast: bool, steps: int = STEPS) -> tuple[torch.Tensor, dict, dict]:
    """AdamW over the span dataset in order; returns the per-step losses, the final parameters and
    every parameter's per-step max |grad|."""
    torch.manual_seed(0)
    model = bert()
    if patched:
        qa_kernels.patch(model)
    maxima = record_gradient_maxima(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    data = span_dataset()
    losses = []
    for step in range(steps):
        rows = slice(step * BATCH % N_EXAMPLES, step * BATCH % N_EXAMPLES + BATCH)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**{k: v[rows] for k, v in data.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return torch.stack(losses), {k: v.detach().clone() for k, v in model.named_parameters()}, maxima


# fp32: seen 3e-7 relative on the losses, 3e-5 of each tensor's max on the parameters.
# bf16 autocast: both sides round to bf16, at different points (the fused op rounds hidden and the
# weight once and accumulates in fp32; eager's bf16 matmuls and backward round more; one step's
# gradients of the fused model are the closer to fp32's). AdamW then amplifies those rounding
# differences in the parameters with small gradients (layer 0's attention) as it does any bf16
# noise: seen 4e-4 on the losses, and 1.6% in relative L2 norm on the parameters (twice the distance
# between the eager bf16 and fp32 runs), while single backbone tensors differ by up to 40%. So the
# losses are held per step and the parameters in norm; that norm is dominated by the embeddings, so
# the head's own weight, the one tensor the fused op computes the gradient of, is also held per
# tensor: seen 1.5e-3 of its max, bound 1e-2 (a head backward that drops the onehot of one row's
# start, the loss value unchanged, moved it by 13% of its max in this loop, which the bf16 loss
# bound did not see).
# (Its bias is a zero-gradient parameter: its per-step gradient is checked, see ZERO_GRAD_NOISE.)
TRAINING_TOL = {
    "fp32": {"loss": 1e-5, "params": 2e-4},
    "bf16_autocast": {"loss": 1e-2, "params": 5e-2, "head_weight": 1e-2},
}


@pytest.mark.parametrize("precision", ["fp32", "bf16_autocast"])
def test_adamw_training_matches_eager(precision):
    autocast = precision == "bf16_autocast"
    eager_losses, eager_params, eager_grads = train_loop(patched=False, autocast=autocast)
    fused_losses, fused_params, fused_grads = train_loop(patched=True, autocast=autocast)
    assert eager_losses[-5:].mean() < 0.5 * eager_losses[:5].mean(), "the task was not learned: a weak test"
    tol = TRAINING_TOL[precision]
    assert fused_losses.dtype == eager_losses.dtype == torch.float32
    assert_close(fused_losses, eager_losses, tol["loss"], "per-step losses")
    assert_params_match(fused_params, eager_params, tol["params"], per_tensor=not autocast)
    if autocast:
        name = "qa_outputs.weight"
        assert_close(fused_params[name], eager_params[name], tol["head_weight"], name)
    assert_zero_gradients_stay_noise(eager_grads, precision, fused=False)  # the premise
    assert_zero_gradients_stay_noise(fused_grads, precision, fused=True)


def _train_with_trainer(output_dir, class_level_patch: bool) -> tuple[torch.Tensor, dict, dict]:
    """transformers.Trainer as a user runs it; the patched run builds its model through
    patch_transformers(), the way code that does not own the model construction would."""
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), report_to="none", max_steps=STEPS, per_device_train_batch_size=BATCH,
        learning_rate=LR, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", seed=0,
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    maxima = {}

    def model_init():
        model = bert()
        maxima.update(record_gradient_maxima(model))
        return model

    if class_level_patch:
        qa_kernels.patch_transformers(["bert"])
    try:
        trainer = transformers.Trainer(model_init=model_init, args=args, train_dataset=SpanDataset())
        assert hf.is_patched(trainer.model) == class_level_patch
        trainer.train()
    finally:
        qa_kernels.unpatch_transformers()
    losses = torch.tensor([log["loss"] for log in trainer.state.log_history if "loss" in log])
    assert len(losses) == STEPS
    assert all(len(v) == STEPS for v in maxima.values()), "one backward per step (of the model Trainer trains)"
    return losses, {k: v.detach().clone() for k, v in trainer.model.named_parameters()}, maxima


def test_trainer_matches_eager(tmp_path):
    eager_losses, eager_params, eager_grads = _train_with_trainer(tmp_path / "eager", class_level_patch=False)
    fused_losses, fused_params, fused_grads = _train_with_trainer(tmp_path / "fused", class_level_patch=True)
    assert eager_losses[-5:].mean() < 0.5 * eager_losses[:5].mean(), "the task was not learned: a weak test"
    tol = TRAINING_TOL["fp32"]
    assert_close(fused_losses, eager_losses, tol["loss"], "per-step losses")
    assert_params_match(fused_params, eager_params, tol["params"])
    assert_zero_gradients_stay_noise(eager_grads, "fp32", fused=False)
    assert_zero_gradients_stay_noise(fused_grads, "fp32", fused=True)


def _bert_batch(device):
    inputs = make_inputs("bert", device)
    inputs["start_positions"], inputs["end_positions"] = positions("mixed", device)
    return inputs


def test_compile_fullgraph_matches_eager(device):
    """torch.compile(fullgraph=True) of the patched model: any graph break (in the patched forward,
    the head's side channel or the op) would raise. AOTAutograd traces forward and backward."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = bert().to(device)
    fused = qa_kernels.patch(copy.deepcopy(eager))
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    inputs = _bert_batch(device)
    for _ in range(2):  # the second call runs the cached graph
        fused.zero_grad(), eager.zero_grad()
        out, ref = compiled(**inputs), eager(**inputs)
        tol = TOLERANCE["fp64"][torch.float32]
        for key in ("loss", "start_logits", "end_logits"):
            assert_close(out[key], ref[key], tol, key)
        g = torch.randn(ref.start_logits.shape, generator=torch.Generator().manual_seed(5)).to(device)
        (out.loss + (out.start_logits * g).sum()).backward()
        (ref.loss + (ref.start_logits * g).sum()).backward()
        assert_grads_match(fused, eager)
    assert not hf.is_patched(eager) and hf.is_patched(fused)


def test_compile_adds_no_graph_break_to_the_model():
    """The patched model has exactly as many graphs as the eager one (here one each): the head
    adds none."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = bert()
    fused = qa_kernels.patch(copy.deepcopy(eager))
    inputs = _bert_batch("cpu")
    explained_eager = torch._dynamo.explain(eager)(**inputs)
    explained_fused = torch._dynamo.explain(fused)(**inputs)
    assert explained_fused.graph_break_count == explained_eager.graph_break_count == 0
    assert explained_fused.graph_count == explained_eager.graph_count == 1


# Under CPU bf16 autocast both sides compute the logits from bf16-rounded hidden states and weights
# (eager: nn.Linear's bf16 matmul; fused: the op rounds its inputs, accumulates in fp32) and the
# loss in fp32. The gradients flow back through a bf16 network, so the bound is bf16's; the
# gradients that are 0 in exact arithmetic are bf16 noise (eager's is the larger: it rounds d_logits
# to bf16 before summing them), bounded relative to the largest gradient.
AUTOCAST_TOL = {"logits": TOLERANCE["eager"][torch.bfloat16], "loss": 1e-2, "grads": 5e-2, "noise": 1e-3}


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_cpu_bf16_autocast_matches_eager(backend, name):
    """fp32 parameters, bf16 activations: the same dtypes as eager (bf16 logits, fp32 loss) and
    the same values within bf16's tolerance."""
    eager, fused = twin(name, "cpu")
    inputs = make_inputs(name, "cpu")
    inputs["start_positions"], inputs["end_positions"] = positions("mixed", "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = eager(**inputs), fused(**inputs)
    assert ref.start_logits.dtype == out.start_logits.dtype == torch.bfloat16
    assert ref.loss.dtype == out.loss.dtype == torch.float32
    assert_close(out.start_logits, ref.start_logits, AUTOCAST_TOL["logits"], "start_logits")
    assert_close(out.end_logits, ref.end_logits, AUTOCAST_TOL["logits"], "end_logits")
    assert_close(out.loss, ref.loss, AUTOCAST_TOL["loss"], "loss")
    g = torch.randn(S, generator=torch.Generator().manual_seed(6))
    (ref.loss + (ref.end_logits.float() * g).sum()).backward()
    (out.loss + (out.end_logits.float() * g).sum()).backward()
    assert_grads_match(fused, eager, tol=AUTOCAST_TOL["grads"], noise=AUTOCAST_TOL["noise"])


def test_bf16_model_without_autocast_loss_dtype():
    """A bf16 model outside autocast: eager's loss is bf16 (its cross-entropy runs in bf16); the
    patched loss has that dtype too (computed in fp32, then rounded: at most one bf16 ulp apart)."""
    eager, fused = twin("bert", "cpu")
    eager, fused = eager.to(torch.bfloat16), fused.to(torch.bfloat16)
    inputs = _bert_batch("cpu")
    ref, out = eager(**inputs), fused(**inputs)
    assert ref.loss.dtype == out.loss.dtype == torch.bfloat16
    assert_close(out.loss, ref.loss, 2 * 2**-8, "loss")


# ------------------------------------------------------------------------------------------------
# Two CPU processes (gloo), each with half of the batch: DistributedDataParallel, FSDP2's
# fully_shard, and transformers' Trainer launched with torchrun. Each is compared with one process
# over the whole batch.

DIST_BATCH = 4


def _dist_batch() -> dict[str, torch.Tensor]:
    # Every position valid, so each rank's mean runs over the same number of rows and the average of
    # the two ranks' gradients (what DDP's all-reduce and FSDP's reduce-scatter compute) equals the
    # full batch's gradient.
    return span_dataset(n=DIST_BATCH, seed=1)


def _wrap(model: torch.nn.Module, engine: str) -> torch.nn.Module:
    if engine == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for layer in model.bert.encoder.layer:  # the usual per-block sharding, then the root
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _full_gradients(model: torch.nn.Module, engine: str) -> dict[str, torch.Tensor]:
    """Every rank calls this: FSDP2's gradients are sharded DTensors, gathered collectively."""
    module = model.module if engine == "ddp" else model
    return {k: p.grad.full_tensor() if engine == "fsdp2" else p.grad for k, p in module.named_parameters()}


def _dist_worker(rank: int, world_size: int, port: int, engine: str, result_path: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = _wrap(qa_kernels.patch(bert()), engine)  # patch before wrapping (see the README)
        shard = DIST_BATCH // world_size
        batch = {k: v[rank * shard : (rank + 1) * shard] for k, v in _dist_batch().items()}
        loss = model(**batch).loss
        loss.backward()
        mean_loss = loss.detach() / world_size
        torch.distributed.all_reduce(mean_loss)  # a sum (gloo has no AVG)
        grads = _full_gradients(model, engine)
        if rank == 0:
            torch.save({"loss": mean_loss, "grads": grads}, result_path)
        # Both ranks past every collective before either tears gloo down (a shutdown racing a
        # peer's last collective deadlocked once here).
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIST_DEADLINE_S = 300  # a hung process group fails the test instead of hanging CI


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_two_processes_match_one_process_full_batch(tmp_path, engine):
    result = tmp_path / "grads.pt"
    workers = mp.spawn(_dist_worker, args=(2, _free_port(), engine, str(result)), nprocs=2, join=False)
    deadline = time.monotonic() + DIST_DEADLINE_S
    while not workers.join(timeout=5):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"the 2-process {engine} run did not finish within {DIST_DEADLINE_S} s")
    got = torch.load(result)

    torch.manual_seed(0)
    single = qa_kernels.patch(bert())
    loss = single(**_dist_batch()).loss
    loss.backward()
    assert_close(got["loss"], loss.detach(), 1e-5, "loss (the mean of the ranks' losses)")
    largest = max(p.grad.abs().max().item() for p in single.parameters())
    assert got["grads"].keys() == dict(single.named_parameters()).keys()
    for name, p in single.named_parameters():
        assert_close(got["grads"][name], p.grad, 1e-4, f"grad of {name}", atol=1e-6 * largest)


TRAINER_STEPS = 10


def _run_trainer_script(out_dir, per_device_batch: int, processes: int) -> dict:
    script = str(Path(__file__).with_name("torchrun_trainer.py"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), script, str(out_dir), str(TRAINER_STEPS),
               str(per_device_batch)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DIST_DEADLINE_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = torch.load(Path(out_dir) / "result.pt")
    assert result["world_size"] == processes and len(result["losses"]) == TRAINER_STEPS
    return result


def test_trainer_under_torchrun_two_processes_matches_one_process(tmp_path):
    """``torchrun --nproc-per-node 2`` (Trainer's DDP over gloo), half of each batch per process,
    against one process over the whole batch: the same losses at every step, the same parameters
    after the last (but the zero-gradient ones, see the module docstring)."""
    two = _run_trainer_script(tmp_path / "two", BATCH // 2, processes=2)
    one = _run_trainer_script(tmp_path / "one", BATCH, processes=1)
    assert one["losses"][-3:].mean() < one["losses"][:3].mean(), "no training happened: a weak test"
    assert_close(two["losses"], one["losses"], TRAINING_TOL["fp32"]["loss"], "per-step losses")
    assert_params_match(two["params"], one["params"], TRAINING_TOL["fp32"]["params"])
