"""The answer-extraction suite: QuestionAnswerer against transformers' question-answering pipeline, end to end.

One *pass* answers every example of the set (N questions, each with its context, ``top_k`` answers
each): ``QuestionAnswerer.__call__`` over all of them at once (``batch_size`` features per forward
pass), or one call of transformers 4.x's ``question-answering`` pipeline over the same lists
(``pipe(question=..., context=..., batch_size=...)``, its documented way to batch). Both sides get
the same tokenizer files, the same weights and the same settings: ``max_seq_len`` = S,
``doc_stride`` = S // 3 (384 / 128, the pipeline's defaults), ``max_answer_len`` 15,
``align_to_words``; QuestionAnswerer with ``aggregation="pipeline"`` (the pipeline's merge: the
answers can then be compared; its default ``"best"`` merge costs the same).

Where the pipeline comes from: transformers 5 has none. The pipeline side runs in a *worker*, this
file run as a script by a Python whose transformers has ``QuestionAnsweringPipeline``:
``--pipeline-python``, else ``$QA_KERNELS_TF4_PYTHON`` (tests/pipeline_reference.py says how to
make one in ~10 s), else this Python if its transformers is 4.x. Without one, only QuestionAnswerer
runs and the output says why the comparison was skipped. The worker imports nothing of qa_kernels,
loads the same tokenizer files and state dict, and times its passes itself (no inter-process
traffic inside a timing); while it runs, this process waits, and the other way round.

Inputs, made offline and seeded: a WordPiece tokenizer trained with ``tokenizers`` on
:data:`SENTENCES` and :data:`QUESTIONS`, wrapped in ``BertTokenizerFast`` (uncased, offsets); a
random-init ``BertForQuestionAnswering`` of :data:`MODELS` ``[--model]`` (SDPA attention, both
versions' default), its QA head scaled so that the logits have a standard deviation of about
:data:`LOGIT_STD` (peaked like a trained head's: a random head's near-flat scores would make every
top-1 a near-tie); N examples, each a question of :data:`QUESTIONS` and a context of 1 to 80
sentences of :data:`SENTENCES` drawn with replacement (accents, Greek, Cyrillic, CJK, currency,
emoji, a long word, phrases and sentences repeated), so that long contexts overflow into several
features and the pipeline's merge has repeated texts to sum.

Mode:
  end-to-end    N examples in, their top_k answers out (the split below is of this time)

Providers:
  pipeline          transformers 4.x's question-answering pipeline (the baseline: speed-ups are over
                    its best batch size)
  answerer          qa_kernels.QuestionAnswerer, the model patched with the fused head (its default)
  answerer-unfused  ... with fused_head=False (the model's own head)

The split of a pass (each part summed over the pass; ``other``: the rest of it):
  tokenize  answerer: check_lengths + tokenize (one batched tokenizer call); pipeline: preprocess
            (per example: the tokenizer, p_mask, one tensor per feature)
  model     answerer: logits (sorting, padding, the forward passes); pipeline: forward (per batch)
  decode    answerer: decode (masks, decode_spans, tokens -> characters, align_to_words);
            pipeline: select_starts_ends and get_indices
  merge     answerer: merge_features; pipeline: the rest of postprocess (its merge, the dicts)
  other     argument checks; the pipeline's DataLoader, collation (its padding) and unbatching

``model_tokens``: the tokens that went through the model, padding included (a forward pre-hook on
each side), against ``tokens``, the features' own.

Agreement, against the pipeline's answers at its smallest batch size: an example's top-1 agrees
when its text and character offsets equal the pipeline's top-1 (or those of an answer the pipeline
scores within :data:`RTOL` of it: a tie) and the scores are within RTOL = 1e-4 relative; its top-k
agrees when its list has the pipeline's length and every rank does (answers tied within RTOL in
either order). The pipeline's own rows are held to the same check (its batch sizes against each
other).

What of the harness fits: :func:`.harness.environment` (the device, torch's threads, the load
average at the start), the interleaving (every (provider, batch size) once per round, ``--rounds``
rounds, the order reversed every other round), the median and p20 / p80 over the rounds
(:func:`.harness.summarize`), the progress bar, the loaded-machine warning, the CSV reader. What
does not: the :class:`.harness.Timer` (do_bench's recipe makes five calls to estimate and many
to warm up; a pass takes seconds, so here one untimed warm-up pass over a few examples, then one
timed pass per round), the bytes moved and GB/s (this is not a memory-bound kernel), the harness's
CSV columns (the rows here have their own, :data:`COLUMNS`; :func:`.harness.write_rows`) and the plot.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

# Only the standard library at module level: the pipeline's worker runs this file as a script, in
# another Python, where qa_kernels need not import.

ENV_VAR = "QA_KERNELS_TF4_PYTHON"
RTOL = 1e-4  # relative, on every score compared
LOGIT_STD = 4.0  # the QA head's logits' standard deviation after scaling (see the module docstring)
MAX_ANSWER_LEN = 15  # tokens (the pipeline's default)
BATCH_SIZES = (1, 4, 16, 64)
ROUNDS = 3
TOP_K = 3
WARMUP_EXAMPLES = 16  # the untimed warm-up pass of each (provider, batch size)
PARTS = ("tokenize", "model", "decode", "merge", "other")
MARKER = "QA_KERNELS_WORKER "  # starts each line the worker answers with (anything else is noise)

# BERT-like sizes, 512 positions each. small: the model the first measurement used.
MODELS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
VOCAB_SIZE = 2000  # the WordPiece vocabulary asked of the trainer

SENTENCES = [
    "Gothenburg is the second-largest city in Sweden.",
    "The river Göta älv meets the sea at Göteborg, on the west coast.",
    "The old harbour once sent iron, timber and tea across the North Sea.",
    "Today the port is the largest in the Nordic countries.",
    "Trams have run in the city since 1879, and the Liseberg park opened in 1923.",
    "The university was founded in 1891 and now teaches more than 50,000 students.",
    "Every August the city hosts a culture festival.",
    "In winter the harbour lights are reflected in the dark water, every winter, every single winter.",
    "The capital of France is Paris; PARIS is also its largest city, and paris hosts the Eiffel Tower.",
    "Paris, Paris, PARIS: the name is repeated three times.",
    "A ticket costs €12.50 in Paris, £10 in London and ¥1,500 in Tokyo; children pay $5 everywhere.",
    "Its price rose from ₹800 to ₹1,200, then fell to ₹950.",
    "The word antidisestablishmentarianism is unbelievably long; antidisestablishmentarianism has 28 letters.",
    "Crème brûlée and café au lait are served at the Café de Flore in Saint-Germain-des-Prés.",
    "São Paulo, Bogotá and Ciudad de México are the largest cities of Latin America.",
    "Der Zug nach München fährt um 14:35 Uhr von Gleis 7 ab.",
    "Zürich liegt am Zürichsee; die Altstadt ist über 2.000 Jahre alt.",
    "Το άλφα (Άλφα) είναι το πρώτο γράμμα· ακολουθεί το βήτα.",  # noqa: RUF001 (Greek)
    "Άλφα και Ωμέγα, αρχή και τέλος.",
    "Москва — столица России, а Санкт-Петербург — её второй город.",  # noqa: RUF001 (Cyrillic)
    "The novel was written by Fyodor Dostoevsky (Фёдор Достоевский) in 1866.",
    "東京タワーは東京都港区にある電波塔です。",
    "高さは333メートルです。東京で二番目に高い。",
    "北京是中国的首都，上海是最大的城市。",  # noqa: RUF001 (CJK punctuation)
    "Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911.",
    "The Amazon carries more water than the Nile, the Yangtze and the Mississippi together.",
    "Mount Everest is 8,849 metres high; K2 is 8,611 metres high.",
    "Water boils at 100 °C at sea level and freezes at 0 °C.",
    "One ångström is 10⁻¹⁰ metres, a tenth of a nanometre.",
    "The meeting is on Tuesday at 10:30 in room 4B; the meeting is on Tuesday, not on Wednesday.",
    "The recipe needs 250 g of flour, 3 eggs, 1½ cups of milk and a pinch of salt.",
    "The password is not hunter2; the password is correct horse battery staple.",
    "Emoji such as 🙂 and 🚀 are single characters in Python but several bytes in UTF-8.",
    "The train to Paris leaves at 9:15, the train to London at 9:45 and the train to Brussels at 10:05.",
    "Yes, it is open since 1999, every day of the week.",
    "Nobody knows who built the first bridge over the river.",
]
QUESTIONS = [
    "What is the capital of France?",
    "When was the university founded?",
    "Where does the river meet the sea?",
    "How much does a ticket cost in London?",
    "Which word is long?",
    "What is served at the café?",
    "Ποιο είναι το πρώτο γράμμα;",
    "東京タワーの高さは?",
    "How high is Mount Everest?",
    "Wann fährt der Zug nach München?",
    "Who won the Nobel Prize in Physics?",
    "When is the meeting?",
    "What is the password?",
    "   When did the Liseberg park open?",  # leading spaces: the pipeline does not strip them
    "Who wrote the novel?",
    "Which river carries the most water?",
]
CONTEXT_SENTENCES = (1, 2, 3, 5, 8, 16, 40, 80)  # a context's length in sentences, drawn uniformly


def make_examples(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (question, context) pairs, the same for the same seed (see the module docstring)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        k = rng.choice(CONTEXT_SENTENCES)
        examples.append((rng.choice(QUESTIONS), " ".join(rng.choice(SENTENCES) for _ in range(k))))
    return examples


def train_tokenizer(directory: str) -> None:
    """Writes ``vocab.txt``: a BERT-uncased WordPiece trained on the suite's text."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = tokenizers.trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials)
    tok.train_from_iterator(SENTENCES + QUESTIONS, trainer)
    tok.model.save(directory)


TOKENIZER_KWARGS = {"do_lower_case": True}


def bert_tokenizer_class(transformers: Any) -> Any:
    """BERT's fast tokenizer class: ``BertTokenizerFast`` in 4.x, ``BertTokenizer`` in 5.x (where it is fast)."""
    return getattr(transformers, "BertTokenizerFast", None) or transformers.BertTokenizer


def model_config(name: str, vocab_size: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, max_position_embeddings=512, attn_implementation="sdpa", **MODELS[name])


def make_model(name: str, vocab_size: int, seed: int):
    """A random-init ``BertForQuestionAnswering`` of ``MODELS[name]``, in eval mode, its QA head
    scaled to logits of standard deviation ~LOGIT_STD (the hidden states are layer-normed: each
    logit's std is about ``0.02 * sqrt(H)`` at init)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForQuestionAnswering(transformers.BertConfig(**model_config(name, vocab_size))).eval()
    hidden = MODELS[name]["hidden_size"]
    with torch.no_grad():
        model.qa_outputs.weight.mul_(LOGIT_STD / (model.config.initializer_range * math.sqrt(hidden)))
    return model


def describe_model(name: str, model) -> str:
    m = MODELS[name]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (
        f"bert-{name} (H{m['hidden_size']} L{m['num_hidden_layers']} A{m['num_attention_heads']} "
        f"I{m['intermediate_size']}, sdpa, {params:.1f}M params)"
    )


# --------------------------------------------------------------------------------------------------
# One pass


@dataclass
class Pass:
    seconds: float
    split: dict[str, float]  # PARTS -> seconds
    model_tokens: int
    answers: Optional[list[list[dict[str, Any]]]]  # per example, the pipeline's dicts


class _Split:
    """Sums the time spent in wrapped callables per part."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PARTS[:-1], 0.0)

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed

    def wrap_generator(self, part: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """For a generator function: the time of each step, not of the call that makes it."""

        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            items = fn(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self.seconds[part] += time.perf_counter() - start
                yield item

        return timed

    def done(self, total: float) -> dict[str, float]:
        return {**self.seconds, "other": max(total - sum(self.seconds.values()), 0.0)}


def count_model_tokens(model) -> tuple[list[int], Any]:
    """``(counter, hook handle)``: ``counter[0]`` grows by the ``input_ids`` of every forward call."""
    counter = [0]

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        counter[0] += int(ids.numel()) if ids is not None else 0

    return counter, model.register_forward_pre_hook(hook, with_kwargs=True)


def answerer_pass(qa, questions: list[str], contexts: list[str], top_k: int, counter: list[int], keep: bool) -> Pass:
    """One timed ``qa(questions, contexts)``; its split from the instance's stages, wrapped for the
    pass (and ``merge_features``, which ``__call__`` calls by its module's name)."""
    from unittest import mock

    from .. import answerer as answerer_module

    split = _Split()
    stages = {"check_lengths": "tokenize", "tokenize": "tokenize", "logits": "model", "decode": "decode"}
    for name, part in stages.items():
        setattr(qa, name, split.wrap(part, getattr(qa, name)))  # instance attributes shadow the methods
    counter[0] = 0
    try:
        with mock.patch.object(answerer_module, "merge_features", split.wrap("merge", answerer_module.merge_features)):
            start = time.perf_counter()
            answers = qa(questions, contexts, top_k=top_k, aggregation="pipeline")
            seconds = time.perf_counter() - start
    finally:
        for name in stages:
            delattr(qa, name)
    rows = [[a.to_dict() for a in row] for row in answers] if keep else None
    return Pass(seconds, split.done(seconds), counter[0], rows)


# --------------------------------------------------------------------------------------------------
# The pipeline's side: a worker in a Python with transformers 4.x


def pipeline_python(explicit: Optional[str] = None) -> tuple[Optional[str], str]:
    """``(python, "")``: the Python whose transformers runs the pipeline (``explicit``, else
    ``$QA_KERNELS_TF4_PYTHON``, else this one if its transformers is 4.x); ``(None, why)`` without one."""
    if explicit:
        return probe_pipeline_python(explicit, "--pipeline-python")
    if os.environ.get(ENV_VAR):
        return probe_pipeline_python(os.environ[ENV_VAR], ENV_VAR)
    from importlib.metadata import PackageNotFoundError, version

    try:
        here = version("transformers")
    except PackageNotFoundError:
        return None, f"transformers is not installed here, and {ENV_VAR} is not set"
    if int(here.split(".")[0]) >= 5:
        return None, (
            f"transformers {here} here has no question-answering pipeline (removed in 5.0), and {ENV_VAR} "
            "is not set: give a Python with transformers 4.x (--pipeline-python or that variable; "
            "tests/pipeline_reference.py says how to make one)"
        )
    return probe_pipeline_python(sys.executable, "this Python")


_PROBED: dict[str, tuple[Optional[str], str]] = {}


def probe_pipeline_python(python: str, where: str) -> tuple[Optional[str], str]:
    """``(python, "")`` when ``python`` runs and has transformers 4.x's question-answering pipeline,
    else ``(None, why not)``, ``where`` naming what gave that Python (checked once per process)."""
    if python not in _PROBED:
        _PROBED[python] = _probe_uncached(python, where)
    return _PROBED[python]


def _probe_uncached(python: str, where: str) -> tuple[Optional[str], str]:
    if not Path(python).exists():
        return None, f"{where}: {python} does not exist"
    probe = "import transformers; from transformers import QuestionAnsweringPipeline; print(transformers.__version__)"
    try:
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{where}: {python} does not run: {error}"
    if result.returncode != 0:
        return None, f"{where}: {python} has no transformers 4.x pipeline: {result.stderr.strip()[-300:]}"
    return python, ""


class PipelineWorker:
    """The pipeline in another Python (this file as a script), one pass per :meth:`run`."""

    def __init__(self, python: str, job: dict[str, Any], directory: str) -> None:
        job_path = Path(directory) / "job.json"
        job_path.write_text(json.dumps(job))
        self._stderr = open(Path(directory) / "worker.stderr", "w+")  # closed in close()
        self._process = subprocess.Popen(
            [python, os.path.abspath(__file__), "--pipeline-worker", str(job_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )  # fmt: skip
        self.ready = self._read()  # {"transformers", "tokenizers", "torch", "features", "tokens"}

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(MARKER):
                answer: dict[str, Any] = json.loads(line[len(MARKER) :])
                return answer
        self._stderr.seek(0)
        raise RuntimeError(f"the pipeline's worker stopped:\n{self._stderr.read()[-4000:]}")

    def run(self, batch_size: int, limit: Optional[int], keep: bool) -> Pass:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"batch_size": batch_size, "limit": limit, "keep": keep}) + "\n")
        self._process.stdin.flush()
        got = self._read()
        return Pass(got["seconds"], got["split"], got["model_tokens"], got["answers"])

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()  # the worker's loop ends with its input
                self._process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._stderr.close()


def _worker(job_path: str) -> None:  # runs in the pipeline's Python: nothing of qa_kernels here
    import tokenizers
    import torch
    from transformers.pipelines import question_answering

    transformers: Any = importlib.import_module("transformers")  # 4.x: not the 5.x that type checks see
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    tokenizer = bert_tokenizer_class(transformers).from_pretrained(job["tokenizer_dir"], **job["tokenizer_kwargs"])
    model = transformers.BertForQuestionAnswering(transformers.BertConfig(**job["config"]))
    model.load_state_dict(torch.load(job["state_dict"]), strict=True)
    model.eval().to(job["device"])
    pipe = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer, device=job["device"])
    counter, _ = count_model_tokens(model)
    questions, contexts = [q for q, _ in job["examples"]], [c for _, c in job["examples"]]
    settings = dict(
        top_k=job["top_k"], max_seq_len=job["max_length"], doc_stride=job["stride"],
        max_answer_len=job["max_answer_len"], align_to_words=True,
    )  # fmt: skip
    features = tokenizer(
        questions, contexts, truncation="only_second", max_length=job["max_length"], stride=job["stride"],
        return_overflowing_tokens=True,
    )["input_ids"]  # fmt: skip

    def answer(message: dict[str, Any]) -> None:
        sys.stdout.write(MARKER + json.dumps(message) + "\n")
        sys.stdout.flush()

    answer(
        {
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "torch": torch.__version__, "features": len(features), "tokens": sum(map(len, features)),
        }
    )  # fmt: skip
    for line in sys.stdin:
        command = json.loads(line)
        n = command["limit"] or len(questions)
        split = _Split()
        originals = {name: getattr(pipe, name) for name in ("preprocess", "forward", "postprocess", "get_indices")}
        pipe.preprocess = split.wrap_generator("tokenize", originals["preprocess"])
        pipe.forward = split.wrap("model", originals["forward"])
        pipe.postprocess = split.wrap("merge", originals["postprocess"])  # less decode, below
        pipe.get_indices = split.wrap("decode", originals["get_indices"])
        select = question_answering.select_starts_ends
        question_answering.select_starts_ends = split.wrap("decode", select)
        counter[0] = 0
        try:
            start = time.perf_counter()
            got = pipe(question=questions[:n], context=contexts[:n], batch_size=command["batch_size"], **settings)
            seconds = time.perf_counter() - start
        finally:
            question_answering.select_starts_ends = select
            for name in originals:
                delattr(pipe, name)
        split.seconds["merge"] -= split.seconds["decode"]  # decode runs inside postprocess
        rows = [got] if n == 1 else got
        answers = [[row] if isinstance(row, dict) else list(row) for row in rows]
        answer(
            {
                "seconds": seconds, "split": split.done(seconds), "model_tokens": counter[0],
                "answers": answers if command["keep"] else None,
            }
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Agreement


def _tie_groups(scores: Sequence[float]) -> list[list[int]]:
    """Indices of consecutive scores within RTOL of each other (their order is noise)."""
    groups: list[list[int]] = []
    for i, s in enumerate(scores):
        if groups and _close(scores[groups[-1][-1]], s):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(abs(a), abs(b))


def _key(answer: dict[str, Any]) -> tuple[str, int, int]:
    return answer["answer"], answer["start"], answer["end"]


def top1_agrees(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> bool:
    """Whether our best answer is the pipeline's: the same text and offsets as its best (or as an
    answer it scores within RTOL of its best: a tie), the score within RTOL of its best's."""
    if not ours or not theirs:
        return not ours and not theirs
    best = theirs[0]["score"]
    tied = {_key(t) for t in theirs if _close(t["score"], best)}
    return _key(ours[0]) in tied and _close(ours[0]["score"], best)


def topk_agrees(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> bool:
    """Whether our answers are the pipeline's: as many; at each rank the score within RTOL of the
    pipeline's; the same texts and offsets, up to the order of answers tied within RTOL."""
    if len(ours) != len(theirs):
        return False
    if not all(_close(o["score"], t["score"]) for o, t in zip(ours, theirs, strict=True)):
        return False
    return all(
        sorted(_key(ours[i]) for i in group) == sorted(_key(theirs[i]) for i in group)
        for group in _tie_groups([t["score"] for t in theirs])
    )


# --------------------------------------------------------------------------------------------------
# The suite


COLUMNS = [
    "suite", "device", "torch", "transformers", "threads", "load_avg", "load_avg_end", "model", "dtype",
    "N", "S", "stride", "top_k", "mode", "provider", "batch_size", "rounds",
    "median_s", "p20_s", "p80_s", "examples_per_s", "speedup_vs_pipeline_best",
    *(f"{part}_s" for part in PARTS), "features", "tokens", "model_tokens", "agree_top1", "agree_topk", "compared",
]  # fmt: skip


@dataclass
class Setup:
    """What every pass of one run shares: the tokenizer's files, the model, the examples."""

    directory: str
    model_name: str
    tokenizer: Any
    models: dict[str, Any] = field(default_factory=dict)  # provider -> its model (answerer ones)


class AnswerSuite:
    """``qa-kernels bench --suite answer`` (the module docstring). It runs through :func:`run`, not
    :func:`.harness.measure`: its rows are passes of seconds with a split and an agreement count,
    not kernel calls with bytes moved."""

    name = "answer"
    dims: tuple[str, ...] = ("N", "S")  # examples, tokens per feature (max_length; stride S // 3)
    modes: tuple[str, ...] = ("end-to-end",)
    providers: tuple[str, ...] = ("pipeline", "answerer", "answerer-unfused")
    baseline = "pipeline"
    dtypes: tuple[str, ...] = ("fp32",)
    presets: ClassVar[dict[str, tuple[int, ...]]] = {"squad-384": (240, 384), "smoke": (8, 64)}

    def unavailable(self, provider: str, device: str) -> Optional[str]:
        return (pipeline_python()[1] or None) if provider == "pipeline" else None

    def default_providers(self, device: str) -> list[str]:
        return [p for p in ("pipeline", "answerer") if self.unavailable(p, device) is None]

    def default_shapes(self, device: str) -> list[tuple[int, ...]]:
        return [self.presets["squad-384"]]

    def default_dtypes(self, device: str) -> list[str]:
        return ["fp32"]

    def moved_bytes(self, mode: str, shape: tuple[int, ...], dtype: str) -> int:
        raise NotImplementedError("the answer suite counts examples per second, not bytes moved")

    def workload(self, shape, dtype, device, providers, cache_bytes):
        raise NotImplementedError("the answer suite runs through qa_kernels.bench.answer.run, not harness.measure")


def run(
    env: Any,
    shapes: Sequence[tuple[int, ...]],
    providers: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    rounds: int = ROUNDS,
    top_k: int = TOP_K,
    model_name: str = "small",
    seed: int = 0,
    python: Optional[str] = None,
    progress: bool = True,
    notes: Optional[list[str]] = None,
) -> list[dict[str, Any]]:
    """Every (shape, provider, batch size), interleaved over ``rounds`` rounds; one row each
    (:data:`COLUMNS`). ``python``: the pipeline's Python (:func:`pipeline_python`), needed when
    ``providers`` has "pipeline". What the reader should know (the tokenizations differ, ...) is
    appended to ``notes``."""
    import transformers

    notes = [] if notes is None else notes
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qa-kernels-bench-answer-") as directory:
        train_tokenizer(directory)
        tokenizer = bert_tokenizer_class(transformers).from_pretrained(directory, **TOKENIZER_KWARGS)
        model = make_model(model_name, len(tokenizer), seed)
        state_dict = os.path.join(directory, "model.pt")
        import torch

        torch.save(model.state_dict(), state_dict)
        description = describe_model(model_name, model)
        for shape in shapes:
            rows += _run_shape(
                env, shape, providers, batch_sizes, rounds, top_k, model_name, model, tokenizer, description,
                directory, state_dict, seed, python, progress, notes,
            )  # fmt: skip
    return rows


def _run_shape(
    env, shape, providers, batch_sizes, rounds, top_k, model_name, model, tokenizer, description,
    directory, state_dict, seed, python, progress, notes,
) -> list[dict[str, Any]]:  # fmt: skip
    import copy

    import torch
    import transformers
    from tqdm.auto import tqdm

    from ..answerer import QuestionAnswerer

    n, max_length = shape
    stride = max_length // 3
    examples = make_examples(n, seed)
    questions, contexts = [q for q, _ in examples], [c for _, c in examples]
    runners: dict[tuple[str, int], Callable[[Optional[int], bool], Pass]] = {}
    worker: Optional[PipelineWorker] = None
    hooks = []
    versions = {p: transformers.__version__ for p in providers}
    try:
        for provider in providers:
            if provider == "pipeline":
                if python is None:
                    raise ValueError("run: the pipeline provider needs its Python (pipeline_python())")
                job = {
                    "tokenizer_dir": directory, "tokenizer_kwargs": TOKENIZER_KWARGS,
                    "config": model_config(model_name, len(tokenizer)), "state_dict": state_dict,
                    "examples": examples, "threads": torch.get_num_threads(), "device": env.device,
                    "top_k": top_k, "max_length": max_length, "stride": stride, "max_answer_len": MAX_ANSWER_LEN,
                }  # fmt: skip
                worker = PipelineWorker(python, job, directory)
                versions[provider] = worker.ready["transformers"]
                for b in batch_sizes:

                    def pipeline_runner(
                        limit: Optional[int], keep: bool, b: int = b, w: PipelineWorker = worker
                    ) -> Pass:
                        return w.run(b, limit, keep)

                    runners[provider, b] = pipeline_runner
                continue
            fused = provider == "answerer"
            own = (model if fused else copy.deepcopy(model)).to(env.device)  # the fused one gets patched
            counter, hook = count_model_tokens(own)
            hooks.append(hook)
            for b in batch_sizes:
                qa = QuestionAnswerer(
                    own, tokenizer, max_length=max_length, stride=stride, max_answer_len=MAX_ANSWER_LEN,
                    batch_size=b, fused_head=fused, aggregation="pipeline",
                )  # fmt: skip

                def runner(limit: Optional[int], keep: bool, qa=qa, counter=counter) -> Pass:
                    m = limit or n
                    return answerer_pass(qa, questions[:m], contexts[:m], top_k, counter, keep)

                runners[provider, b] = runner
        encoding = QuestionAnswerer(model, tokenizer, max_length=max_length, stride=stride, fused_head=False).tokenize(
            questions, contexts
        )
        features, tokens = len(encoding["input_ids"]), sum(map(len, encoding["input_ids"]))
        if worker is not None and (worker.ready["features"], worker.ready["tokens"]) != (features, tokens):
            notes.append(
                f"the pipeline's tokenizer (tokenizers {worker.ready['tokenizers']}) made {worker.ready['features']} "
                f"features of {worker.ready['tokens']} tokens, this one {features} of {tokens}: the answers "
                "cannot be expected to agree"
            )
        cases = list(runners)
        passes: dict[tuple[str, int], list[Pass]] = {case: [] for case in cases}
        total = len(cases) * (rounds + 1)
        with tqdm(total=total, desc=f"bench answer {n}x{max_length}", unit="pass", disable=not progress) as bar:
            try:
                for case in cases:  # untimed warm-up: first calls, allocations
                    bar.set_postfix_str(f"warm-up {case[0]} batch {case[1]}")
                    runners[case](min(WARMUP_EXAMPLES, n), False)
                    bar.update()
                for r in range(rounds):
                    for case in cases if r % 2 == 0 else cases[::-1]:
                        bar.set_postfix_str(f"round {r + 1} {case[0]} batch {case[1]}")
                        passes[case].append(runners[case](None, r == 0))
                        bar.update()
            except KeyboardInterrupt:
                notes.append("interrupted: the rows hold the rounds measured so far")
                if not any(passes.values()):
                    raise
    finally:
        if worker is not None:
            worker.close()
        for hook in hooks:
            hook.remove()
    return _rows(env, shape, stride, top_k, description, versions, passes, features, tokens)


def _rows(env, shape, stride, top_k, description, versions, passes, features, tokens) -> list[dict[str, Any]]:
    from .harness import summarize

    n, max_length = shape
    measured = {case: got for case, got in passes.items() if got}
    pipeline = sorted(b for p, b in measured if p == "pipeline")
    reference = measured["pipeline", pipeline[0]][0].answers if pipeline else None
    best = max((n / summarize([x.seconds for x in measured["pipeline", b]])[0] for b in pipeline), default=None)
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for (provider, b), got in measured.items():
        median, p20, p80 = summarize([x.seconds for x in got])
        split = {f"{part}_s": summarize([x.split[part] for x in got])[0] for part in PARTS}
        answers = got[0].answers
        agree = (
            (sum(map(top1_agrees, answers, reference)), sum(map(topk_agrees, answers, reference)))
            if reference is not None and answers is not None
            else None
        )
        rows.append(
            {
                "suite": "answer", "device": env.device_name, "torch": env.torch, "transformers": versions[provider],
                "threads": env.threads, "load_avg": round(env.load_avg, 2), "load_avg_end": round(end_load, 2),
                "model": description, "dtype": "fp32", "N": n, "S": max_length, "stride": stride, "top_k": top_k,
                "mode": "end-to-end", "provider": provider, "batch_size": b, "rounds": len(got),
                "median_s": median, "p20_s": p20, "p80_s": p80, "examples_per_s": n / median,
                "speedup_vs_pipeline_best": n / median / best if best else None, **split,
                "features": features, "tokens": tokens, "model_tokens": got[0].model_tokens,
                "agree_top1": agree[0] if agree else None, "agree_topk": agree[1] if agree else None,
                "compared": n if agree else None,
            }
        )  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------
# Reporting


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a fixed-width table: one line per (shape, provider, batch size)."""
    header = (
        f"{'NxS':>9} {'provider':16} {'batch':>5} {'median s':>8} {'[p20, p80]':>15} {'ex/s':>7} {'vs pipe':>7} "
        + " ".join(f"{part:>8}" for part in PARTS)
        + f" {'model tok':>9} {'padding':>7} {'top-1':>9} {'top-k':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = r["speedup_vs_pipeline_best"]
        agree = [
            f"{r[key]}/{r['compared']}" if r["compared"] is not None else "-" for key in ("agree_top1", "agree_topk")
        ]
        lines.append(
            f"{r['N']}x{r['S']:<5} {r['provider']:16} {r['batch_size']:>5} {r['median_s']:>8.3f} "
            f"{'[' + format(r['p20_s'], '.2f') + ', ' + format(r['p80_s'], '.2f') + ']':>15} "
            f"{r['examples_per_s']:>7.2f} {_fmt(ratio, '.2f') + ('x' if ratio is not None else ''):>7} "
            + " ".join(f"{r[f'{part}_s']:>8.3f}" for part in PARTS)
            + f" {r['model_tokens']:>9} {r['model_tokens'] / r['tokens']:>6.2f}x {agree[0]:>9} {agree[1]:>9}"
        )
    return "\n".join(lines)


def bench_command(args: Any, command: str) -> int:
    """``qa-kernels bench --suite answer``: the options checked, the run, the table, the CSV."""
    import torch

    from .. import bench
    from . import harness
    from .harness import choose_values as _choose

    parser = args.subparser
    suite = bench.SUITES["answer"]
    for option in ("warmup_ms", "rep_ms", "plot"):
        if getattr(args, option) is not None:
            parser.error(f"--{option.replace('_', '-')}: not used by the answer suite (one timed pass per round)")
    device = harness.choose_device(parser, args.device)
    shapes = harness.choose_shapes(parser, args.shapes, suite, device)
    for _, s in shapes:
        if s < 8 or s > 512:
            parser.error(f"--shapes: S (max_length) must be in [8, 512] (the model's positions); got {s}")
    _choose(parser, "--dtypes", args.dtypes, suite.dtypes, ["fp32"])
    _choose(parser, "--modes", args.modes, suite.modes, list(suite.modes))
    python, why = pipeline_python(args.pipeline_python)
    default = [p for p in ("pipeline", "answerer") if p != "pipeline" or python is not None]
    providers = _choose(parser, "--providers", args.providers, suite.providers, default)
    if "pipeline" in providers and python is None:
        parser.error(f"--providers: pipeline cannot run: {why}")
    skipped = f"pipeline comparison skipped: {why}" if "pipeline" not in providers and python is None else None
    if skipped and args.providers is None:
        print(f"note: provider pipeline left out: {why}", file=sys.stderr)
    batch_sizes = list(dict.fromkeys(args.batch_sizes or BATCH_SIZES))
    for name, values in (
        ("--batch-sizes", batch_sizes),
        ("--rounds", [args.rounds or 1]),
        ("--top-k", [args.top_k or 1]),
    ):
        if any(v < 1 for v in values):
            parser.error(f"{name}: must be >= 1; got {values}")
    harness.check_append(parser, args.csv, args.append, COLUMNS, "an answer run")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)

    env = bench.environment(device)
    bench.warn_if_loaded(env)
    notes: list[str] = []
    try:
        rows = run(
            env, shapes, providers, batch_sizes, rounds=args.rounds or ROUNDS, top_k=args.top_k or TOP_K,
            model_name=args.model or "small", seed=args.seed, python=python, progress=not args.no_progress,
            notes=notes,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("\ninterrupted before a round was measured", file=sys.stderr)
        return 130

    print(f"qa-kernels bench (answer) on {env.describe()}")
    print(f"model: {rows[0]['model']}, random init, seed {args.seed}; command: {command}")
    if skipped:
        print(skipped)
    else:
        pipe = next(r for r in rows if r["provider"] == "pipeline")
        print(
            f"pipeline: transformers {pipe['transformers']} ({python}); answerer: transformers "
            f"{rows[-1]['transformers']}; agreement against the pipeline at batch size "
            f"{min(r['batch_size'] for r in rows if r['provider'] == 'pipeline')} (top-1 and top-{rows[0]['top_k']}: "
            f"text and offsets equal, scores within {RTOL:g} relative)"
        )
    print(format_table(rows))
    for shape in dict.fromkeys((r["N"], r["S"]) for r in rows):
        mine = [r for r in rows if (r["N"], r["S"]) == shape]
        best = {p: max((r for r in mine if r["provider"] == p), key=lambda r: r["examples_per_s"]) for p in providers}
        if "pipeline" in best and "answerer" in best:
            a, p = best["answerer"], best["pipeline"]
            print(
                f"{shape[0]}x{shape[1]}: answerer at its best batch size ({a['batch_size']}): "
                f"{a['examples_per_s']:.2f} examples/s, {a['speedup_vs_pipeline_best']:.2f}x the pipeline at its "
                f"best ({p['batch_size']}: {p['examples_per_s']:.2f} examples/s)"
            )
    print(f"load average at the end: {rows[0]['load_avg_end']:.2f} (at the start: {env.load_avg:.2f})")
    for note in notes:
        print(f"note: {note}")
    noisy = [f"{r['provider']} batch {r['batch_size']}" for r in rows if r["p80_s"] - r["p20_s"] > 0.1 * r["median_s"]]
    if noisy:
        print(f"warning: {len(noisy)} of {len(rows)} results spread over 10% of their median (p80 - p20): "
              f"{'; '.join(noisy[:5])}{' ...' if len(noisy) > 5 else ''}; rerun on a quieter machine",
              file=sys.stderr)  # fmt: skip
    if args.csv:
        harness.write_rows(rows, args.csv, COLUMNS, "an answer run", append=args.append)
        print(f"wrote {args.csv}")
    return 130 if any(n.startswith("interrupted") for n in notes) else 0


if __name__ == "__main__":  # the pipeline's worker (PipelineWorker): python answer.py --pipeline-worker JOB
    if sys.argv[1:2] != ["--pipeline-worker"] or len(sys.argv) != 3:
        sys.exit("usage: python answer.py --pipeline-worker JOB.json (qa-kernels bench --suite answer starts it)")
    sys.path.pop(0)  # this file's folder: its modules must not shadow others
    _worker(sys.argv[2])
