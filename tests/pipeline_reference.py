"""The real transformers 4.x ``question-answering`` pipeline, run in another Python, as the
reference for QuestionAnswerer (transformers 5.x has no such pipeline).

Where it comes from: ``QA_KERNELS_TF4_PYTHON``, the path of a Python interpreter that imports
transformers 4.x (with its pipeline), tokenizers and torch. Without it, the tests that need it skip
and say so. A 4.57 environment beside this one takes ~10 s to set up and downloads only
transformers, tokenizers and huggingface-hub, reusing this environment's torch and numpy::

    python -m venv /tmp/tf4
    python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
        > /tmp/tf4/lib/python3.11/site-packages/main-env.pth   # this env's packages, after tf4's own
    /tmp/tf4/bin/pip install transformers==4.57.1 'tokenizers>=0.22,<0.23' 'huggingface-hub>=0.34,<1.0'
    export QA_KERNELS_TF4_PYTHON=/tmp/tf4/bin/python

(transformers 4.57 wants tokenizers <= 0.23.0 and huggingface-hub < 1.0, so it cannot share this
environment when that holds transformers 5.)

The test writes a job (a JSON file: the tokenizer's files, the model's config and state dict, the
examples, the pipeline calls) and this file runs it as a script in that Python, with nothing of
qa_kernels imported there: ``python tests/pipeline_reference.py job.json out.json``. Each call's
answers come back as the pipeline returned them (normalized to a list per example), with the
features the 4.x tokenizer made, so the test can check both sides tokenized alike.

A call may ask for ``"merge": "max"``: the real pipeline with one thing changed, its merge of
candidates (``get_answer``): a candidate whose character span is already listed keeps the larger
score, instead of adding its score onto an answer with the same text case-insensitively. All else
(tokenization, p_mask and softmax, the decoding, ``align_to_words``) is 4.x's own code; that is the
reference for QuestionAnswerer's default ``aggregation="best"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

ENV_VAR = "QA_KERNELS_TF4_PYTHON"


def reference_python() -> tuple[Optional[str], str]:
    """(the 4.x Python, "") or (None, why there is none)."""
    python = os.environ.get(ENV_VAR)
    if not python:
        return None, f"{ENV_VAR} is not set: no transformers 4.x Python to run the real pipeline (see {__file__})"
    from qa_kernels.bench.answer import probe_pipeline_python  # here only: the 4.x Python runs this file too

    return probe_pipeline_python(python, ENV_VAR)


def run_reference(python: str, job: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Runs ``job`` in ``python`` (this file as a script); its output as a dict."""
    job_path, out_path = directory / "job.json", directory / "out.json"
    job_path.write_text(json.dumps(job))
    result = subprocess.run(
        [python, __file__, str(job_path), str(out_path)], capture_output=True, text=True, timeout=1200
    )
    if result.returncode != 0:
        raise RuntimeError(f"the 4.x pipeline run failed:\n{result.stderr[-4000:]}")
    output: dict[str, Any] = json.loads(out_path.read_text())
    return output


def _main(job_path: str, out_path: str) -> None:  # runs in the 4.x Python
    import tokenizers
    import torch
    import transformers
    from transformers import QuestionAnsweringPipeline

    class _KeepMax:
        """What ``get_answer`` hands back for a span already listed: the pipeline then does
        ``answer["score"] += score``, i.e. reads 0.0 here and writes the candidate's score."""

        def __init__(self, answer: dict[str, Any]) -> None:
            self.answer = answer

        def __bool__(self) -> bool:
            return True

        def __getitem__(self, key: str) -> Any:
            return 0.0 if key == "score" else self.answer[key]

        def __setitem__(self, key: str, value: float) -> None:
            assert key == "score"
            self.answer["score"] = max(self.answer["score"], value)

    class MaxPerSpanPipeline(QuestionAnsweringPipeline):
        """The 4.x pipeline, merging by character span with the best score (see the docstring)."""

        def get_indices(self, *args: Any, **kwargs: Any) -> Any:
            self._last_span = super().get_indices(*args, **kwargs)
            return self._last_span

        def get_answer(self, answers: Any, target: str) -> Any:
            for answer in answers:
                if (answer["start"], answer["end"]) == tuple(self._last_span):
                    return _KeepMax(answer)
            return None

    job = json.loads(Path(job_path).read_text())
    spec = job["tokenizer"]
    tokenizer = getattr(transformers, spec["class"]).from_pretrained(spec["dir"], **spec.get("kwargs", {}))
    spec = job["model"]
    config = getattr(transformers, spec["config_class"])(**spec["config"])
    model = getattr(transformers, spec["class"])(config)
    model.load_state_dict(torch.load(spec["state_dict"]), strict=True)
    model.eval()
    pipelines = {
        merge: cls(model=model, tokenizer=tokenizer)
        for merge, cls in (("sum", QuestionAnsweringPipeline), ("max", MaxPerSpanPipeline))
    }
    runs, features = [], []
    for call in job["calls"]:
        pipe = pipelines[call.get("merge", "sum")]
        kwargs = call["kwargs"]
        answers = []
        for example in job["examples"]:
            got = pipe(question=example["question"], context=example["context"], **kwargs)
            answers.append([got] if isinstance(got, dict) else list(got))
        runs.append(answers)
        question_first = tokenizer.padding_side == "right"
        features.append(
            [
                tokenizer(
                    example["question"] if question_first else example["context"],
                    example["context"] if question_first else example["question"],
                    truncation="only_second" if question_first else "only_first",
                    max_length=kwargs.get("max_seq_len", 384), stride=kwargs.get("doc_stride", 128),
                    return_overflowing_tokens=True,
                )["input_ids"]
                for example in job["examples"]
            ]
        )  # fmt: skip
    versions = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
    Path(out_path).write_text(json.dumps({"versions": versions, "runs": runs, "features": features}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
