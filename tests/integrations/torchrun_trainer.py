"""transformers' Trainer on the patched tiny BERT of tests/models.py, as a script: the
test runs it under ``torchrun --nproc-per-node 2`` (DDP; on CPU over gloo, accelerate's default
there) and alone, and compares.

    python tests/integrations/torchrun_trainer.py OUT_DIR STEPS PER_DEVICE_BATCH

Examples are taken in order (a sequential sampler), so that at every step the two processes'
batches together are the single process's batch. Rank 0 saves the logged per-step losses and the
final parameters to OUT_DIR/result.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers

import qa_kernels
from tests.models import LR, SpanDataset, bert


class InOrderTrainer(transformers.Trainer):
    def _get_train_sampler(self, *args, **kwargs):  # 4.x takes no argument, 5.x an optional dataset
        return torch.utils.data.SequentialSampler(self.train_dataset)


def main(out_dir: str, steps: int, per_device_batch: int) -> None:
    args = transformers.TrainingArguments(
        output_dir=out_dir, report_to="none", max_steps=steps, per_device_train_batch_size=per_device_batch,
        learning_rate=LR, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", seed=0,
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    qa_kernels.patch_transformers(["bert"])  # as code that does not build the model itself would
    trainer = InOrderTrainer(model_init=bert, args=args, train_dataset=SpanDataset())
    assert qa_kernels.integrations.hf.is_patched(trainer.model)
    trainer.train()
    if trainer.is_world_process_zero():
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        world = trainer.args.world_size
        torch.save({"losses": torch.tensor(losses), "params": params, "world_size": world}, Path(out_dir) / "result.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
