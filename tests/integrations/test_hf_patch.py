"""qa_kernels.patch / unpatch on real transformers QA models (tiny random configs: nothing is
downloaded): the patched model against an unpatched copy of itself, for every family in MODELS.

The models, their inputs and the comparisons are in tests/models.py.

Tests that exercise the head's math take the `backend` fixture (every implementation); the ones about
the integration itself (dispatch, return types, unpatch, checkpoints) run once, on the default one."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import qa_kernels
from qa_kernels import backend as qa_backend
from qa_kernels.integrations import hf
from tests.models import (
    BERTISH,
    HEAD_FIELDS,
    MODELS,
    B,
    S,
    assert_grads_match,
    assert_outputs_match,
    bert,
    gpt_neox,
    llama,
    make_inputs,
    positions,
    roberta,
    t5,
    tensors_of,
    transformers,
    twin,
)  # fmt: skip
from tests.utils import TOLERANCE, assert_close, in_threads, skip_threads_under_the_interpreter


def random_objective(out, generator: torch.Generator) -> torch.Tensor:
    """loss plus the logits against a random upstream gradient (never ones)."""
    g_start = torch.randn(out.start_logits.shape, generator=generator).to(out.start_logits.device)
    g_end = torch.randn(out.end_logits.shape, generator=generator).to(out.end_logits.device)
    objective = (out.start_logits.float() * g_start).sum() + (out.end_logits.float() * g_end).sum()
    return objective + 3.0 * out.loss if out.loss is not None else objective


FP32_TOL = TOLERANCE["fp64"][torch.float32]


@pytest.mark.parametrize("name", list(MODELS))
def test_patched_matches_eager(backend, device, name):
    """Outputs (every field), loss and every parameter's gradient, with negative, out-of-range and
    (B, 1) positions; the caller's position tensors are not modified."""
    eager, fused = twin(name, device)
    inputs = make_inputs(name, device)
    start, end = positions("mixed", device)
    start_before, end_before = start.clone(), end.clone()
    common = dict(**inputs, output_hidden_states=True, output_attentions=True)

    ref = eager(**common, start_positions=start.clone(), end_positions=end.clone())
    out = fused(**common, start_positions=start, end_positions=end)
    assert torch.equal(start, start_before) and torch.equal(end, end_before)
    assert_outputs_match(out, ref, FP32_TOL)
    random_objective(ref, torch.Generator().manual_seed(1)).backward()
    random_objective(out, torch.Generator().manual_seed(1)).backward()
    assert_grads_match(fused, eager)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("labels", ["none", "start_only"])
def test_without_both_positions_no_loss(device, name, labels):
    """No positions (inference), or only one side: eager returns loss=None; so does the patch, and
    every output field and gradient matches. What is tested is the routing of the arguments (the
    positions put back where they came from), which does not depend on the backend: it runs on the
    default one; the op without positions is held to every backend in tests/ops/qa_head/test_qa_head.py."""
    eager, fused = twin(name, device)
    inputs = make_inputs(name, device)
    if labels == "start_only":
        inputs["start_positions"] = positions("valid", device)[0]
    ref, out = eager(**inputs), fused(**inputs)
    assert ref.loss is None and out.loss is None
    assert_outputs_match(out, ref, FP32_TOL)
    random_objective(ref, torch.Generator().manual_seed(2)).backward()
    random_objective(out, torch.Generator().manual_seed(2)).backward()
    assert_grads_match(fused, eager)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("labels", [True, False])
def test_return_dict_false(device, name, labels):
    """A tuple, the loss first when there is one, then exactly eager's other elements."""
    eager, fused = twin(name, device)
    inputs = dict(**make_inputs(name, device), output_hidden_states=True, return_dict=False)
    if labels:
        inputs["start_positions"], inputs["end_positions"] = positions("mixed", device)
    ref, out = eager(**inputs), fused(**inputs)
    assert isinstance(out, tuple) and isinstance(ref, tuple)
    assert len(out) == len(ref)
    n_head = 3 if labels else 2  # (loss,) start_logits, end_logits
    for i in range(n_head):
        assert_close(out[i], ref[i], FP32_TOL, f"element {i}")
    for i in range(n_head, len(ref)):
        got, want = tensors_of(out[i]), tensors_of(ref[i])
        assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), f"element {i}"


def test_return_dict_from_config(device):
    """config.return_dict=False (no keyword) gives a tuple too, as in eager."""
    eager, fused = twin("bert", device)
    for model in (eager, fused):
        model.config.return_dict = False
    start, end = positions("valid", device)
    inputs = dict(**make_inputs("bert", device), start_positions=start, end_positions=end)
    ref, out = eager(**inputs), fused(**inputs)
    assert isinstance(out, tuple) and len(out) == len(ref) == 3
    for i, key in enumerate(HEAD_FIELDS):
        assert_close(out[i], ref[i], FP32_TOL, key)


def test_positional_arguments(device):
    """Positions passed positionally (they sit mid-signature) are routed to the fused loss too."""
    eager, fused = twin("bert", device)
    inputs = make_inputs("bert", device)
    start, end = positions("mixed", device)
    # BertForQuestionAnswering.forward(input_ids, attention_mask, token_type_ids, position_ids,
    # inputs_embeds, start_positions, end_positions, ...); transformers 4.x has head_mask before
    # inputs_embeds: the positions' places are read from the installed signature.
    params = list(inspect.signature(transformers.BertForQuestionAnswering.forward).parameters)[1:]
    args = [None] * (params.index("end_positions") + 1)
    for key, value in dict(**inputs, start_positions=start, end_positions=end).items():
        args[params.index(key)] = value
    ref, out = eager(*args), fused(*args)
    assert out.loss is not None
    assert_outputs_match(out, ref, FP32_TOL)


# float64_tensor: eager's division promotes the loss to float64 (the output's dtype is compared too).
@pytest.mark.parametrize(
    "name,num_items", [("llama", 7), ("llama", "tensor"), ("llama", "float64_tensor"), ("bert", "tensor")]
)
def test_num_items_in_batch(backend, device, name, num_items):
    """Trainer passes num_items_in_batch through **kwargs. GenericForQuestionAnswering (Llama)
    hands it to self.loss_function: each side becomes sum / num_items_in_batch. The inline
    encoders (BERT) ignore it: the mean stays. The patch does what each class does."""
    eager, fused = twin(name, device)
    start, end = positions("mixed", device)
    n = {"tensor": torch.tensor(7, device=device), "float64_tensor": torch.tensor(7.0, dtype=torch.float64)}.get(
        num_items, num_items
    )
    inputs = dict(**make_inputs(name, device), start_positions=start, end_positions=end, num_items_in_batch=n)
    if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(type(eager).forward).parameters.values()):
        # transformers 4.x: the encoders' forwards (and 4.40's Llama) take no **kwargs, so Trainer
        # passes no num_items_in_batch; the patched forward refuses the keyword as eager does.
        for model in (eager, fused):
            with pytest.raises(TypeError, match="num_items_in_batch"):
                model(**inputs)
        return
    ref, out = eager(**inputs), fused(**inputs)
    mean_loss = eager(**{k: v for k, v in inputs.items() if k != "num_items_in_batch"}).loss
    if name == "llama":  # start has 2 valid rows, end 2: (sum_s / 7 + sum_e / 7) / 2 != the mean
        assert not torch.allclose(ref.loss.float(), mean_loss)
    else:
        assert torch.equal(ref.loss, mean_loss)
    assert_outputs_match(out, ref, FP32_TOL)
    random_objective(ref, torch.Generator().manual_seed(3)).backward()
    random_objective(out, torch.Generator().manual_seed(3)).backward()
    assert_grads_match(fused, eager)


def test_distilbert_dropout_before_head_is_kept(device):
    """DistilBert applies qa_dropout to the hidden states before qa_outputs; in train mode the
    patched model draws the same mask from the same seed, so it matches eager exactly; and the
    dropout really is active (train != eval), so the comparison would see it missing."""
    eager, fused = twin("distilbert", device, qa_dropout=0.5)
    inputs = dict(**make_inputs("distilbert", device), start_positions=positions("valid", device)[0],
                  end_positions=positions("valid", device)[1])  # fmt: skip
    eager.train(), fused.train()
    torch.manual_seed(123)
    ref = eager(**inputs)
    torch.manual_seed(123)
    out = fused(**inputs)
    assert_outputs_match(out, ref, FP32_TOL)
    random_objective(ref, torch.Generator().manual_seed(4)).backward()
    random_objective(out, torch.Generator().manual_seed(4)).backward()
    assert_grads_match(fused, eager)
    with torch.no_grad():
        eval_loss = fused.eval()(**inputs).loss
    assert (eval_loss - out.loss).abs().item() > 1e-3, "qa_dropout had no effect: the test would prove nothing"


class _CountCalls:
    """Wraps the forward of the implementation that serves the head (looked up at call time on every
    route: the registered op, the eager autograd route, the no-grad one) and counts calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("name", list(MODELS))
def test_unpatch_restores_eager(device, name, monkeypatch):
    """unpatch() gives back the original class and a plain nn.Linear head, the fused op no longer
    runs, and the outputs are bit-identical to a model that was never patched."""
    impl = qa_backend.implementation("qa_head", torch.device(device).type)
    counter = _CountCalls(impl.qa_head_fwd)
    monkeypatch.setattr(impl, "qa_head_fwd", counter)
    never = MODELS[name]().to(device)
    model = copy.deepcopy(never)
    cls = type(model)
    start, end = positions("mixed", device)
    inputs = dict(**make_inputs(name, device), start_positions=start, end_positions=end)

    assert qa_kernels.patch(model) is model and hf.is_patched(model)
    assert type(model) is not cls and isinstance(model, cls) and type(model).__name__ == cls.__name__
    model(**inputs)
    assert counter.calls == 1

    assert qa_kernels.unpatch(model) is model and not hf.is_patched(model)
    assert type(model) is cls and type(model.qa_outputs) is nn.Linear
    assert not any(k.startswith("_qa") for k in vars(model.qa_outputs))
    out, ref = model(**inputs), never(**inputs)
    assert counter.calls == 1, "the fused op ran after unpatch()"
    for key in HEAD_FIELDS:
        assert torch.equal(out[key], ref[key]), key
    assert qa_kernels.unpatch(model) is model  # unpatching an eager model changes nothing


def test_patch_is_idempotent_and_survives_deepcopy(device):
    eager, fused = twin("bert", device)
    assert qa_kernels.patch(fused) is fused and type(qa_kernels.patch(fused)) is type(fused)
    clone = copy.deepcopy(fused)
    assert hf.is_patched(clone) and type(clone) is type(fused)
    assert clone.qa_outputs.weight is not fused.qa_outputs.weight
    inputs = dict(**make_inputs("bert", device), start_positions=positions("valid", device)[0],
                  end_positions=positions("valid", device)[1])  # fmt: skip
    assert_outputs_match(clone(**inputs), eager(**inputs), FP32_TOL)


def test_one_model_serves_many_threads(backend, device):
    """One patched model called from four threads at once, labelled and unlabelled calls interleaved,
    with and without autograd: every call gets eager's loss for its own positions (and none without
    them), and no call raises. Nothing about a call lives on the model."""
    skip_threads_under_the_interpreter(backend)
    eager, fused = twin("bert", device)
    inputs = make_inputs("bert", device)

    def work(i):
        generator = torch.Generator().manual_seed(i)
        with qa_kernels.use_backend(backend):
            for step in range(12):
                start, end = (torch.randint(-2, S + 2, (B,), generator=generator).to(device) for _ in range(2))
                with torch.set_grad_enabled(step % 2 == 0):
                    if (i + step) % 3 == 0:
                        out, ref = fused(**inputs), eager(**inputs)
                        assert out.loss is None
                    else:
                        out = fused(**inputs, start_positions=start, end_positions=end)
                        ref = eager(**inputs, start_positions=start, end_positions=end)
                        assert_close(out.loss, ref.loss, FP32_TOL, f"thread {i} step {step} loss")
                assert_close(out.start_logits, ref.start_logits, FP32_TOL, "start_logits")

    in_threads(4, work)


def test_patched_model_pickles_and_wraps_in_data_parallel(device):
    """The per-thread positions keep a pickle round trip and nn.DataParallel working (torch.compile
    with fullgraph=True: tests/integrations/test_hf_training.py)."""
    import pickle

    eager, fused = twin("bert", device)
    start, end = positions("mixed", device)
    inputs = dict(**make_inputs("bert", device), start_positions=start, end_positions=end)
    ref = eager(**inputs)
    restored = pickle.loads(pickle.dumps(fused))
    assert hf.is_patched(restored)
    assert_close(restored(**inputs).loss, ref.loss, FP32_TOL, "unpickled loss")
    assert_close(nn.DataParallel(fused)(**inputs).loss, ref.loss, FP32_TOL, "DataParallel loss")


def test_head_replaced_after_patch(device):
    """A new qa_outputs assigned after patch(): a labelled forward says so instead of silently
    running eager; patch() again attaches the new head."""
    eager, fused = twin("bert", device)
    fused.qa_outputs = nn.Linear(32, 2).to(device)
    eager.qa_outputs = copy.deepcopy(fused.qa_outputs)
    inputs = dict(**make_inputs("bert", device), start_positions=positions("valid", device)[0],
                  end_positions=positions("valid", device)[1])  # fmt: skip
    with pytest.raises(RuntimeError, match="was replaced after patch"):
        fused(**inputs)
    assert qa_kernels.patch(fused) is fused and isinstance(fused.qa_outputs, hf.FusedQAOutputs)
    assert_outputs_match(fused(**inputs), eager(**inputs), FP32_TOL)


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_and_checkpoints_round_trip(device, tmp_path, name):
    """Same keys and tensors; eager state loads into patched and back; save_pretrained of a
    patched model loads as the plain class (architectures names it) and the reverse."""
    eager, fused = twin(name, device)
    cls = type(eager)
    sd_eager, sd_fused = eager.state_dict(), fused.state_dict()
    assert list(sd_fused) == list(sd_eager) and "qa_outputs.weight" in sd_fused and "qa_outputs.bias" in sd_fused
    assert all(torch.equal(sd_fused[k], sd_eager[k]) for k in sd_eager)

    with torch.no_grad():  # load a different eager state into the patched model, then back
        other = MODELS[name]().to(device)
        fused.load_state_dict(other.state_dict(), strict=True)
        assert torch.equal(fused.qa_outputs.weight, other.qa_outputs.weight)
        eager.load_state_dict(fused.state_dict(), strict=True)
        assert torch.equal(eager.qa_outputs.bias, other.qa_outputs.bias)

    fused.save_pretrained(tmp_path / "patched")
    loaded = cls.from_pretrained(tmp_path / "patched")
    assert loaded.config.architectures == [cls.__name__] and not hf.is_patched(loaded)
    assert type(loaded) is cls
    assert all(torch.equal(v, sd_fused[k].cpu()) for k, v in loaded.state_dict().items())
    eager.save_pretrained(tmp_path / "eager")
    reloaded = qa_kernels.patch(transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "eager"))
    assert hf.is_patched(reloaded) and isinstance(reloaded, cls)
    assert all(torch.equal(v, sd_fused[k].cpu()) for k, v in reloaded.state_dict().items())


def _tiny_bigbird():
    config = transformers.BigBirdConfig(**{k: v for k, v in BERTISH.items() if k != "attn_implementation"},
                                        attention_type="original_full")  # fmt: skip
    return transformers.BigBirdForQuestionAnswering(config)


class _CustomForward(transformers.BertForQuestionAnswering):
    def forward(self, *args, **kwargs):  # a forward qa_kernels has not checked
        return super().forward(*args, **kwargs)


class _SameForward(transformers.BertForQuestionAnswering):
    """A user subclass that adds nothing to forward: patchable."""


def _with_head(head_factory):
    def make():
        model = bert()
        model.qa_outputs = head_factory(model.config.hidden_size)
        return model

    return make


@pytest.mark.parametrize(
    "make,why",
    [
        (_tiny_bigbird, "MLP head with question masking"),
        (lambda: transformers.BertModel(transformers.BertConfig(**BERTISH)), "not a transformers QA class"),
        (lambda: _CustomForward(transformers.BertConfig(**BERTISH)), "not a transformers QA class"),
        (_with_head(lambda h: nn.Sequential(nn.Linear(h, h), nn.Linear(h, 2))), "not a plain nn.Linear(H, 2)"),
        (_with_head(lambda h: nn.Linear(h, 3)), "not a plain nn.Linear(H, 2)"),
    ],
    ids=["bigbird", "backbone", "subclass_forward", "mlp_head", "three_logits"],
)
def test_unsupported_model_is_refused_untouched(make, why):
    model = make()
    cls, head_cls, state = type(model), type(getattr(model, "qa_outputs", None)), copy.deepcopy(model.state_dict())
    with pytest.raises(hf.UnsupportedModelError) as info:
        qa_kernels.patch(model)
    message = str(info.value)
    assert cls.__name__ in message and why in message
    assert "BertForQuestionAnswering" in message and "T5ForQuestionAnswering" in message  # the supported list
    assert type(model) is cls and type(getattr(model, "qa_outputs", None)) is head_cls
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("factory", [llama, gpt_neox], ids=["llama", "gpt_neox"])
def test_custom_loss_function_is_refused(device, factory):
    """A forward that computes its loss with self.loss_function (GenericForQuestionAnswering: Llama;
    GPT-NeoX's own forward, which passes it no **kwargs) honours a custom loss_function set on the
    model. The fused op cannot, so patch() refuses it, naming the class, rather than silently
    replacing it. Whether eager uses the attribute is observed, not read from the source: where it
    does not (transformers 4.40 computes both losses inline), patching it is right and keeps eager's
    loss. The default loss_function is patched and matches eager either way."""
    eager = factory().to(device)
    fused = qa_kernels.patch(copy.deepcopy(eager))
    start, end = positions("valid", device)
    inputs = dict(input_ids=make_inputs("llama", device)["input_ids"], start_positions=start, end_positions=end)
    assert_close(fused(**inputs).loss, eager(**inputs).loss, FP32_TOL, "loss with the default loss_function")

    custom = 123.0
    eager.loss_function = lambda *args, **kwargs: torch.tensor(custom, device=device)
    eager_uses_it = eager(**inputs).loss.item() == custom
    assert hf._calls_loss_function(type(eager)) == eager_uses_it, "the source check disagrees with eager"
    if not eager_uses_it:  # eager ignores the attribute: so may the patch
        ref = eager(**inputs).loss
        assert_close(qa_kernels.patch(copy.deepcopy(eager))(**inputs).loss, ref, FP32_TOL, "loss")
        return
    with pytest.raises(hf.UnsupportedModelError, match="loss_function") as info:
        qa_kernels.patch(eager)
    assert type(eager).__name__ in str(info.value)
    assert not hf.is_patched(eager) and type(eager.qa_outputs) is nn.Linear
    assert eager(**inputs).loss.item() == custom  # untouched: still the user's loss

    # Set after patch(): the patched forward refuses to drop it (no silent change of the loss).
    fused.loss_function = eager.loss_function
    with pytest.raises(RuntimeError, match=r"loss_function was replaced after patch\(\)"):
        fused(**inputs)
    assert fused(input_ids=inputs["input_ids"]).start_logits.shape == inputs["input_ids"].shape  # no labels: fine


def test_wrapped_model_is_refused():
    model = torch.compile(bert(), backend="eager")
    with pytest.raises(hf.UnsupportedModelError, match=r"before torch\.compile"):
        qa_kernels.patch(model)


def test_subclass_with_inherited_forward_is_patched(device):
    config = transformers.BertConfig(**BERTISH)
    eager = _SameForward(config).to(device)
    fused = qa_kernels.patch(copy.deepcopy(eager))
    assert hf.is_patched(fused) and isinstance(fused, _SameForward)
    inputs = dict(**make_inputs("bert", device), start_positions=positions("mixed", device)[0],
                  end_positions=positions("mixed", device)[1])  # fmt: skip
    assert_outputs_match(fused(**inputs), eager(**inputs), FP32_TOL)


def test_patch_transformers_class_level(tmp_path):
    """Selected classes come out patched from construction and from_pretrained; others do not;
    unpatch_transformers() stops it; unknown names are refused."""
    bert_config = transformers.BertConfig(**BERTISH)
    transformers.BertForQuestionAnswering(bert_config).save_pretrained(tmp_path)
    try:
        qa_kernels.patch_transformers(["bert", "LlamaForQuestionAnswering"])
        assert hf.is_patched(transformers.BertForQuestionAnswering(bert_config))
        assert hf.is_patched(transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path))
        assert hf.is_patched(llama())
        assert not hf.is_patched(roberta())
        assert not hf.is_patched(transformers.BertModel(bert_config))

        qa_kernels.patch_transformers()  # every supported class; other models untouched
        assert hf.is_patched(roberta()) and hf.is_patched(t5())
        bigbird = _tiny_bigbird()
        assert not hf.is_patched(bigbird) and type(bigbird) is transformers.BigBirdForQuestionAnswering
    finally:
        qa_kernels.unpatch_transformers()
    assert not hf.is_patched(transformers.BertForQuestionAnswering(bert_config))
    with pytest.raises(ValueError, match="unknown model 'nonexistent'"):
        qa_kernels.patch_transformers(["nonexistent"])
    with pytest.raises(hf.UnsupportedModelError, match="BertModel"):
        qa_kernels.patch_transformers([transformers.BertModel])
    assert not hf.is_patched(transformers.BertForQuestionAnswering(bert_config))


def test_supported_list_covers_the_installed_transformers():
    """Every *ForQuestionAnswering class of the installed transformers is either supported or
    refused with a reason; the supported ones that exist are importable under their listed name."""
    import transformers.models.auto.modeling_auto as auto

    names = set(auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES.values())
    generic_cls = hf._generic_qa_class()  # None before transformers 4.53

    for name in sorted(names):
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        generic = generic_cls is not None and cls.forward is generic_cls.forward
        assert name in hf.supported_models() or name in hf.NOT_SUPPORTED or generic, name


def test_positions_reach_nothing_but_the_loss_in_the_installed_sources():
    """The patch runs each forward without positions, so it must know every place a forward uses
    them outside its loss block. Read from the installed transformers: exactly one
    `if start_positions is not None and end_positions is not None:` (the loss), or two where the
    first turns the cache off (the classes listed in hf.NO_CACHE_WITH_LABELS, which the patch
    mirrors)."""
    check = "if start_positions is not None and end_positions is not None:"
    seen = 0
    for name in hf.supported_models():
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        source = inspect.getsource(inspect.unwrap(cls.forward))
        count = source.count(check)
        if name in hf.NO_CACHE_WITH_LABELS:
            assert count == 2 and f"{check}\n            use_cache = False" in source, name
        else:
            assert count == 1, f"{name}: {count} checks of both positions"
        seen += 1
    assert seen >= 55, seen  # 59 of them exist in transformers 4.40, 73 in 5.24
