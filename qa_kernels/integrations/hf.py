"""Hugging Face transformers: run a ``*ForQuestionAnswering`` model's head and loss as the fused op.

``patch(model)`` changes one model instance in place; ``unpatch(model)`` restores it exactly;
``patch_transformers()`` makes every supported model built afterwards come out patched.

How it works. Every supported forward does the same three things after its backbone::

    logits = self.qa_outputs(sequence_output)                  # (B, S, H) -> (B, S, 2)
    start_logits, end_logits = logits.split(1, dim=-1)          # squeezed, .contiguous()
    loss = clamped cross-entropy of both sides (inline, or self.loss_function)   # iff both positions

A patched model keeps its class's own forward and changes only the head call. The model's class
becomes a thin subclass whose ``forward`` takes the positions out of the call, hands them to the
``qa_outputs`` module and runs the original forward with no positions (so transformers computes no
loss); ``qa_outputs`` (the same ``nn.Linear`` object, its class swapped for :class:`FusedQAOutputs`)
runs :func:`qa_kernels.qa_head` on the hidden states it is called with (logits and loss in one op)
and returns the logits as ``(B, S, 2)``. The patched forward then puts the fused loss into the
model's own output. So everything that forward does around the head stays exactly as written in
the installed transformers version: the backbone call and its keywords (Longformer's global
attention mask, T5's shifted decoder inputs, ``**kwargs``), DistilBert's dropout before the head,
LayoutLMv2's slicing, every output field (hidden_states, attentions, Longformer's
global_attentions, the Seq2Seq fields, Luke's entity states), ``return_dict=False`` tuples. No
per-model copy of any forward exists here; the two per-class facts it needs (does the forward call
``self.loss_function`` at all, so that a custom one must be refused? does it pass its ``**kwargs``,
hence Trainer's ``num_items_in_batch``, to it?) are read from the class. The parameters stay where
they are (``qa_outputs.weight`` / ``qa_outputs.bias``), so state_dicts and checkpoints move freely
between patched and unpatched models.

Class swapping (rather than an instance ``forward`` attribute) keeps the patch with the module
through ``copy.deepcopy``, pickling, ``nn.DataParallel``'s replicas and FSDP's own class swap.

The positions reach the head through a per-thread table (a ``threading.local``, which
``torch.compile(fullgraph=True)`` traces with no graph break): the patched forward files this
call's positions under its head for the length of the call, the head takes them and files the loss
back. Nothing about a call lives on the model, so one model instance serves any number of threads
at once, labelled or not, as eager does (DataParallel's replicas run in threads of their own too).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Iterable
from typing import Any, Optional, Union

import torch
from torch import nn

from ..ops.qa_head import qa_head

# (model_type, class name) of every transformers QA class whose forward was checked to be
# `qa_outputs = nn.Linear(H, 2)` applied once, `split(1, dim=-1)`, and transformers' clamped
# cross-entropy (inline, or `self.loss_function` = ForQuestionAnsweringLoss). Classes from other
# transformers versions (4.4x, 5.17) are listed under the same names; a name the installed version
# lacks is simply never matched. Any class whose forward IS GenericForQuestionAnswering.forward
# (the decoder-only families) is supported too, listed here or not.
SUPPORTED: tuple[tuple[str, str], ...] = (
    # encoders, inline loss
    ("albert", "AlbertForQuestionAnswering"),
    ("bert", "BertForQuestionAnswering"),
    ("camembert", "CamembertForQuestionAnswering"),
    ("canine", "CanineForQuestionAnswering"),
    ("convbert", "ConvBertForQuestionAnswering"),
    ("data2vec-text", "Data2VecTextForQuestionAnswering"),
    ("deberta", "DebertaForQuestionAnswering"),
    ("deberta-v2", "DebertaV2ForQuestionAnswering"),
    ("distilbert", "DistilBertForQuestionAnswering"),  # dropout before the head: kept
    ("electra", "ElectraForQuestionAnswering"),
    ("ernie", "ErnieForQuestionAnswering"),
    ("flaubert", "FlaubertForQuestionAnsweringSimple"),
    ("fnet", "FNetForQuestionAnswering"),
    ("funnel", "FunnelForQuestionAnswering"),
    ("ibert", "IBertForQuestionAnswering"),
    ("jina_embeddings_v3", "JinaEmbeddingsV3ForQuestionAnswering"),
    ("layoutlm", "LayoutLMForQuestionAnswering"),
    ("layoutlmv2", "LayoutLMv2ForQuestionAnswering"),  # slices the hidden states: kept
    ("lilt", "LiltForQuestionAnswering"),
    ("longformer", "LongformerForQuestionAnswering"),  # own output class (global_attentions)
    ("luke", "LukeForQuestionAnswering"),  # own output class (entity states)
    ("markuplm", "MarkupLMForQuestionAnswering"),
    ("megatron-bert", "MegatronBertForQuestionAnswering"),
    ("mobilebert", "MobileBertForQuestionAnswering"),
    ("mpnet", "MPNetForQuestionAnswering"),
    ("mra", "MraForQuestionAnswering"),
    ("nystromformer", "NystromformerForQuestionAnswering"),
    ("rembert", "RemBertForQuestionAnswering"),
    ("roberta", "RobertaForQuestionAnswering"),
    ("roberta-prelayernorm", "RobertaPreLayerNormForQuestionAnswering"),
    ("roc_bert", "RoCBertForQuestionAnswering"),
    ("roformer", "RoFormerForQuestionAnswering"),
    ("squeezebert", "SqueezeBertForQuestionAnswering"),
    ("xlm", "XLMForQuestionAnsweringSimple"),
    ("xlm-roberta", "XLMRobertaForQuestionAnswering"),
    ("xlm-roberta-xl", "XLMRobertaXLForQuestionAnswering"),
    ("xlnet", "XLNetForQuestionAnsweringSimple"),
    ("xmod", "XmodForQuestionAnswering"),
    ("yoso", "YosoForQuestionAnswering"),
    # transformers 4.x only (deprecated in 4.4x, removed in 5.0): the same forward as BERT's
    ("ernie_m", "ErnieMForQuestionAnswering"),
    ("mega", "MegaForQuestionAnswering"),
    ("nezha", "NezhaForQuestionAnswering"),
    ("qdqbert", "QDQBertForQuestionAnswering"),
    # decoder-only, inline loss (or self.loss_function without **kwargs)
    ("bloom", "BloomForQuestionAnswering"),
    ("falcon", "FalconForQuestionAnswering"),
    ("gpt2", "GPT2ForQuestionAnswering"),
    ("gpt_neo", "GPTNeoForQuestionAnswering"),
    ("gpt_neox", "GPTNeoXForQuestionAnswering"),
    ("mpt", "MptForQuestionAnswering"),
    ("opt", "OPTForQuestionAnswering"),  # head on word_embed_proj_dim
    # decoder-only, GenericForQuestionAnswering (self.loss_function(..., **kwargs))
    ("arcee", "ArceeForQuestionAnswering"),
    ("diffllama", "DiffLlamaForQuestionAnswering"),
    ("exaone4", "Exaone4ForQuestionAnswering"),
    ("gptj", "GPTJForQuestionAnswering"),
    ("llama", "LlamaForQuestionAnswering"),
    ("minimax", "MiniMaxForQuestionAnswering"),
    ("ministral", "MinistralForQuestionAnswering"),
    ("ministral3", "Ministral3ForQuestionAnswering"),
    ("mistral", "MistralForQuestionAnswering"),
    ("mixtral", "MixtralForQuestionAnswering"),
    ("nemotron", "NemotronForQuestionAnswering"),
    ("qwen2", "Qwen2ForQuestionAnswering"),
    ("qwen2_moe", "Qwen2MoeForQuestionAnswering"),
    ("qwen3", "Qwen3ForQuestionAnswering"),
    ("qwen3_moe", "Qwen3MoeForQuestionAnswering"),
    ("qwen3_next", "Qwen3NextForQuestionAnswering"),
    ("seed_oss", "SeedOssForQuestionAnswering"),
    ("smollm3", "SmolLM3ForQuestionAnswering"),
    ("ultrabert", "UltrabertForQuestionAnswering"),
    # encoder-decoders: the head runs on the DECODER's last hidden states
    ("bart", "BartForQuestionAnswering"),
    ("bigbird_pegasus", "BigBirdPegasusForQuestionAnswering"),
    ("led", "LEDForQuestionAnswering"),
    ("mbart", "MBartForQuestionAnswering"),
    ("mt5", "MT5ForQuestionAnswering"),
    ("mvp", "MvpForQuestionAnswering"),
    ("t5", "T5ForQuestionAnswering"),
    ("umt5", "UMT5ForQuestionAnswering"),
)

# QA classes with a different head or loss: refused by name, with the reason.
NOT_SUPPORTED: dict[str, str] = {
    "BigBirdForQuestionAnswering": "an MLP head with question masking",
    "LayoutLMv3ForQuestionAnswering": "an MLP head",
    "ModernBertForQuestionAnswering": "head -> dropout -> classifier",
    "ReformerForQuestionAnswering": "a Linear(2H, 2) head over concatenated states",
    "SplinterForQuestionAnswering": "a bilinear question-aware span head",
    "LxmertForQuestionAnswering": "answer classification, not span extraction",
    "FlaubertForQuestionAnswering": "a beam-search span head (the *Simple class is supported)",
    "XLMForQuestionAnswering": "a beam-search span head (the *Simple class is supported)",
    "XLNetForQuestionAnswering": "a beam-search span head (the *Simple class is supported)",
    "TapasForQuestionAnswering": "table cell selection, not span extraction",
    "ViltForQuestionAnswering": "answer classification, not span extraction",
    "VisualBertForQuestionAnswering": "answer classification, not span extraction",
    "BlipForQuestionAnswering": "answer generation, not span extraction",
}

# The one quirk that reaches beyond the head: these encoder-decoders turn the decoder's cache off
# when both positions are given (`if start_positions is not None and end_positions is not None:
# use_cache = False`, before the backbone runs). The patched forward, which runs them without
# positions, does the same. tests/integrations/test_hf_patch.py checks this set against the installed sources.
NO_CACHE_WITH_LABELS = frozenset(
    {
        "BartForQuestionAnswering",
        "BigBirdPegasusForQuestionAnswering",
        "LEDForQuestionAnswering",
        "MBartForQuestionAnswering",
        "MT5ForQuestionAnswering",
        "MvpForQuestionAnswering",
        "T5ForQuestionAnswering",
        "UMT5ForQuestionAnswering",
    }
)

_SUPPORTED_NAMES = frozenset(name for _, name in SUPPORTED)
_HEAD = "qa_outputs"


class UnsupportedModelError(TypeError):
    """The model is not one :func:`patch` can run through the fused op exactly."""


def supported_models() -> list[str]:
    """The supported class names (transformers' ``*ForQuestionAnswering`` classes), sorted."""
    return sorted(_SUPPORTED_NAMES)


def _unsupported(model_or_cls: Any, why: str) -> UnsupportedModelError:
    name = model_or_cls.__name__ if isinstance(model_or_cls, type) else type(model_or_cls).__name__
    return UnsupportedModelError(
        f"qa_kernels.patch cannot patch {name}: {why}. Supported: the transformers classes "
        f"{', '.join(supported_models())}, and any class whose forward is transformers' "
        "GenericForQuestionAnswering.forward (decoder-only models)."
    )


# ------------------------------------------------------------------------------------------------
# The head: the model's own nn.Linear(H, 2), forward through the fused op.


class _Call:
    """One labelled forward of a patched model, in flight: its positions, and the loss once the
    head has computed it."""

    __slots__ = ("end", "loss", "num_items", "start")

    def __init__(self, start: torch.Tensor, end: torch.Tensor, num_items: Any) -> None:
        self.start, self.end, self.num_items = start, end, num_items
        self.loss: Optional[torch.Tensor] = None


_per_thread = threading.local()  # .calls: {id(head module): _Call} for this thread's labelled forwards


def _calls() -> dict[int, _Call]:
    calls = getattr(_per_thread, "calls", None)
    if calls is None:
        calls = _per_thread.calls = {}
    return calls


class FusedQAOutputs(nn.Linear):
    """A patched model's ``qa_outputs``: the same ``nn.Linear(H, 2)`` object (same parameters,
    hooks and state_dict keys) with its forward running :func:`qa_kernels.qa_head`.

    Called as the model's forward calls it, ``self.qa_outputs(hidden)`` with ``hidden (B, S, H)``,
    it returns the logits ``(B, S, 2)`` as a view of one ``(2, B, S)`` buffer (one copy of the
    2·B·S logits, by ``torch.stack``): the forward's ``split(1, dim=-1)`` and
    ``squeeze(-1).contiguous()`` then copy nothing more. When this thread's patched forward has
    filed positions for this head (a labelled call in flight), the same op also computes the loss
    and files it back for that forward to return.
    """

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, S, H) -> (B, S, 2)
        call = _calls().get(id(self))
        if call is None:
            out = qa_head(hidden, self.weight, self.bias)
        else:
            if call.loss is not None:
                raise RuntimeError(
                    "qa_kernels: the patched model's forward called qa_outputs twice in one call; "
                    "this model's forward is not the single-head forward qa_kernels.patch supports"
                )
            # transformers' loss moves the positions to the logits' device (device_map / pipeline
            # parallel models): so does the patch; qa_head itself insists on one device.
            start, end = call.start.to(hidden.device), call.end.to(hidden.device)
            out = qa_head(hidden, self.weight, self.bias, start, end, num_items_in_batch=call.num_items)
            call.loss = out.loss
        return torch.stack((out.start_logits, out.end_logits)).permute(1, 2, 0)


# ------------------------------------------------------------------------------------------------
# The model: a subclass per transformers class whose forward routes the positions to the head.


def _generic_qa_class() -> Optional[type[Any]]:
    """transformers' GenericForQuestionAnswering (>= 4.53), or None on older versions."""
    try:
        from transformers.modeling_layers import GenericForQuestionAnswering
    except ImportError:
        return None
    return GenericForQuestionAnswering


def _loss_takes_kwargs(cls: type[Any]) -> bool:
    """Whether ``cls.forward`` passes its ``**kwargs`` to ``self.loss_function`` (so that Trainer's
    ``num_items_in_batch`` turns the mean into ``sum / num_items_in_batch``). The inline encoders
    and GPT-NeoX do not: for them eager ignores ``num_items_in_batch``, and so does the patch."""
    generic = _generic_qa_class()
    forward = inspect.unwrap(cls.forward)
    if generic is not None and forward is inspect.unwrap(generic.forward):
        return True
    try:  # transformers 4.4x: each decoder-only class has its own copy of the same forward
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    return "self.loss_function(start_logits, end_logits, start_positions, end_positions, **kwargs)" in source


def _calls_loss_function(cls: type[Any]) -> bool:
    """Whether ``cls.forward`` computes its loss with ``self.loss_function`` at all, with or without
    ``**kwargs`` (GenericForQuestionAnswering; GPT-NeoX's own forward passes none). For these a
    user can set ``model.loss_function``, which the fused op cannot honour: :func:`patch` refuses a
    custom one. The inline encoders (and transformers 4.4x's copies) never read the attribute."""
    generic = _generic_qa_class()
    forward = inspect.unwrap(cls.forward)
    if generic is not None and forward is inspect.unwrap(generic.forward):
        return True
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    return "self.loss_function(" in source


def _runs_supported_forward(cls: type[Any]) -> bool:
    """Whether ``cls.forward`` is the forward of a supported transformers class."""
    generic = _generic_qa_class()
    for base in cls.__mro__:
        if "forward" not in vars(base):
            continue
        # The first class defining forward is the one whose forward runs: a user subclass that
        # overrides forward is not one we checked.
        if generic is not None and base is generic:
            return True
        return base.__name__ in _SUPPORTED_NAMES and base.__module__.startswith("transformers.")
    return False


def _fused_forward_for(cls: type[Any]):
    """The patched ``forward`` of ``cls``: ``cls.forward`` with the loss computed by the head."""
    original = cls.forward
    params = list(inspect.signature(original).parameters)[1:]  # without self
    if "start_positions" not in params or "end_positions" not in params:
        raise _unsupported(cls, "its forward takes no start_positions / end_positions")
    start_index, end_index = params.index("start_positions"), params.index("end_positions")
    loss_takes_kwargs = _loss_takes_kwargs(cls)
    calls_loss_function = _calls_loss_function(cls)
    defining = next(base for base in cls.__mro__ if "forward" in vars(base))
    no_cache_with_labels = defining.__name__ in NO_CACHE_WITH_LABELS and "use_cache" in params
    use_cache_index = params.index("use_cache") if no_cache_with_labels else -1

    @functools.wraps(original)  # the same signature: Trainer reads the label names from it
    def forward(self, *args, **kwargs):
        args = list(args)
        start, end = None, None
        # Positions may come by keyword or by position (4.x forwards put them mid-signature).
        if len(args) > start_index:
            start, args[start_index] = args[start_index], None
        else:
            start = kwargs.pop("start_positions", None)
        if len(args) > end_index:
            end, args[end_index] = args[end_index], None
        else:
            end = kwargs.pop("end_positions", None)
        if start is None or end is None:  # eager computes no loss: the head runs without labels
            if start_index < len(args):
                args[start_index] = start
            elif start is not None:
                kwargs["start_positions"] = start
            if end_index < len(args):
                args[end_index] = end
            elif end is not None:
                kwargs["end_positions"] = end
            return original(self, *args, **kwargs)

        head = getattr(self, _HEAD)
        if not isinstance(head, FusedQAOutputs):
            raise RuntimeError(
                f"qa_kernels: {type(self).__name__}.{_HEAD} was replaced after patch() (it is a "
                f"{type(head).__name__}); call qa_kernels.patch(model) again"
            )
        if calls_loss_function:
            from transformers.loss.loss_utils import ForQuestionAnsweringLoss

            if self.loss_function is not ForQuestionAnsweringLoss:  # set after patch(): not ours to drop
                raise RuntimeError(
                    f"qa_kernels: {type(self).__name__}.loss_function was replaced after patch() (it is "
                    f"{self.loss_function!r}); the fused op computes transformers' QA loss only: "
                    "qa_kernels.unpatch(model) to use a custom loss"
                )
        if no_cache_with_labels:  # as eager does when it sees both positions
            if len(args) > use_cache_index:
                args[use_cache_index] = False
            else:
                kwargs["use_cache"] = False
        num_items = kwargs.get("num_items_in_batch") if loss_takes_kwargs else None
        calls, key = _calls(), id(head)
        if key in calls:
            raise RuntimeError(
                f"qa_kernels: {type(self).__name__}.forward with positions was called again, in the same "
                "thread, from inside a labelled forward of the same model; the patched model does not "
                "support re-entrant labelled calls"
            )
        call = calls[key] = _Call(start, end, num_items)
        try:
            out = original(self, *args, **kwargs)
        finally:
            del calls[key]
        loss = call.loss
        if loss is None:
            raise RuntimeError(
                f"qa_kernels: {type(self).__name__}.forward did not call {_HEAD}; it is not the "
                "single-head forward qa_kernels.patch supports"
            )
        logits = out[0]  # start_logits: the loss is first only once it exists
        if not torch.is_autocast_enabled(logits.device.type):
            # Eager's cross-entropy runs in the logits' dtype outside autocast (float32 inside), and a
            # floating num_items_in_batch tensor promotes the division's result.
            dtype = logits.dtype
            if isinstance(num_items, torch.Tensor) and num_items.is_floating_point():
                dtype = torch.promote_types(dtype, num_items.dtype)
            loss = loss.to(dtype)
        if isinstance(out, tuple):  # return_dict=False: eager puts the loss first
            return (loss, *out)
        return type(out)(loss=loss, **out)

    return forward


_FUSED_CLASSES: dict[type, type] = {}


def _new_patched(cls: type[nn.Module]) -> nn.Module:
    """Unpickling and deepcopy: a bare ``cls`` instance, already carrying the patched class."""
    obj = cls.__new__(cls)
    obj.__class__ = _fused_class(cls)
    return obj


def _reduce_ex(self, protocol):
    # Pickle a patched model as its transformers class plus "patched", never as the generated
    # subclass (which no module can name).
    _newobj, _cls, *rest = object.__reduce_ex__(self, max(protocol, 2))  # (copyreg.__newobj__, (cls,), state, ...)
    return (_new_patched, (type(self)._qa_original,), *rest)


def _fused_class(cls: type[Any]) -> type:
    """The patched subclass of ``cls`` (one per class, cached). Same ``__name__``, so
    ``save_pretrained`` writes the same ``architectures`` and Trainer sees the same class name."""
    fused = _FUSED_CLASSES.get(cls)
    if fused is None:
        fused = type(
            cls.__name__,
            (cls,),
            {
                "forward": _fused_forward_for(cls),
                "_qa_original": cls,
                "__reduce_ex__": _reduce_ex,
                "__module__": cls.__module__,
                "__qualname__": f"{cls.__qualname__}[qa_kernels]",
                "__doc__": f"{cls.__name__} with its QA head and loss fused by qa_kernels.patch.",
            },
        )
        _FUSED_CLASSES[cls] = fused
    return fused


# ------------------------------------------------------------------------------------------------
# Public API.


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` is a model patched by :func:`patch`."""
    return "_qa_original" in vars(type(model))


def _check_patchable(model: nn.Module) -> None:
    if isinstance(model, nn.parallel.DistributedDataParallel) or isinstance(model, nn.DataParallel):
        raise _unsupported(model, "patch the model before wrapping it (qa_kernels.patch(model), then DDP(model))")
    if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
        raise _unsupported(model, "patch the model before torch.compile (qa_kernels.patch(model), then compile)")
    name = type(model).__name__
    if name in NOT_SUPPORTED:
        raise _unsupported(model, f"it has {NOT_SUPPORTED[name]}, not the Linear(H, 2) head this op fuses")
    if not _runs_supported_forward(type(model)):
        raise _unsupported(model, "it is not a transformers QA class whose forward qa_kernels has checked")
    head = getattr(model, _HEAD, None)
    if type(head) is not nn.Linear or head.out_features != 2:
        raise _unsupported(model, f"its {_HEAD} is {head!r}, not a plain nn.Linear(H, 2)")
    if _calls_loss_function(type(model)):
        from transformers.loss.loss_utils import ForQuestionAnsweringLoss

        if model.loss_function is not ForQuestionAnsweringLoss:
            raise _unsupported(
                model, f"its loss_function is {model.loss_function!r}, not transformers' ForQuestionAnsweringLoss"
            )


def patch(model: nn.Module) -> nn.Module:
    """Runs ``model``'s QA head and loss as one fused op; patches this instance in place.

    ``model`` is a transformers ``*ForQuestionAnswering`` model (see :data:`SUPPORTED`, plus every
    ``GenericForQuestionAnswering`` decoder). Its outputs, output class, keywords, parameters and
    state_dict stay those of the unpatched model; start/end logits, loss and gradients equal
    eager's up to float rounding. Patch before wrapping the model (DDP, FSDP, torch.compile).
    Patching a patched model does nothing (but re-attach a ``qa_outputs`` replaced since).

    Returns:
        ``model`` itself.

    Raises:
        UnsupportedModelError (a TypeError) naming the class and listing the supported ones, for
        an unknown class, a subclass that overrides forward, a head that is not a plain
        ``nn.Linear(H, 2)``, a custom ``loss_function``, or a wrapped model. Nothing is changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"qa_kernels.patch expects a transformers model (nn.Module); got {type(model).__name__}")
    if is_patched(model):
        head = getattr(model, _HEAD, None)
        if type(head) is nn.Linear and head.out_features == 2:  # qa_outputs replaced since patch()
            head.__class__ = FusedQAOutputs
        elif not isinstance(head, FusedQAOutputs):
            raise _unsupported(model, f"its {_HEAD} is {head!r}, not a plain nn.Linear(H, 2)")
        return model
    _check_patchable(model)
    fused = _fused_class(type(model))  # may raise (no position arguments): nothing changed yet
    getattr(model, _HEAD).__class__ = FusedQAOutputs
    model.__class__ = fused
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restores the model :func:`patch` changed: its own class and a plain ``nn.Linear`` head, so
    it runs transformers' eager forward again. A model that is not patched is returned unchanged."""
    if not is_patched(model):
        return model
    head = getattr(model, _HEAD)
    if isinstance(head, FusedQAOutputs):
        head.__class__ = nn.Linear  # type: ignore[assignment]  # the class swap back, on purpose
    model.__class__ = vars(type(model))["_qa_original"]
    return model


# Class-level patching: PreTrainedModel.post_init (the last step of every model's __init__, so also
# of from_pretrained / from_config) patches the instances of the selected classes.
_class_level: Optional[frozenset[str]] = None  # selected class names; None when off
_ALL = "*"
_original_post_init = None


def _resolve_selection(models: Union[str, type, Iterable[Union[str, type]], None]) -> frozenset[str]:
    if models is None:
        return frozenset({_ALL})
    if isinstance(models, (str, type)):
        models = [models]
    by_type: dict[str, list[str]] = {}
    for model_type, name in SUPPORTED:
        by_type.setdefault(model_type, []).append(name)
    selected = set()
    for item in models:
        if isinstance(item, type):
            if not _runs_supported_forward(item):
                raise _unsupported(item, "it is not a transformers QA class whose forward qa_kernels has checked")
            selected.add(item.__name__)
        elif item in _SUPPORTED_NAMES:
            selected.add(item)
        elif item in by_type:
            selected.update(by_type[item])
        else:
            raise ValueError(
                f"qa_kernels.patch_transformers: unknown model {item!r}; give a class, a class name or a "
                f"model_type among: {', '.join(sorted(by_type))}"
            )
    return frozenset(selected)


def patch_transformers(models: Union[str, type, Iterable[Union[str, type]], None] = None) -> None:
    """Patches every supported QA model built from now on (``from_pretrained``, ``from_config``,
    direct construction, inside Trainer code you do not own), until :func:`unpatch_transformers`.

    Args:
        models: ``None`` for every supported class (and every ``GenericForQuestionAnswering``
            decoder); else model types (``"bert"``, ``"llama"``), class names
            (``"BertForQuestionAnswering"``) or classes. Calling again replaces the selection.

    Models built before the call are not changed (use :func:`patch`). Exact instances of the
    selected classes are patched; a subclass that overrides forward is left alone.

    Raises:
        ValueError / UnsupportedModelError for a name or class that is not supported.
    """
    global _class_level, _original_post_init
    from transformers import PreTrainedModel

    selection = _resolve_selection(models)
    if _original_post_init is None:
        _original_post_init = PreTrainedModel.post_init

        @functools.wraps(_original_post_init)
        def post_init(self, *args, **kwargs):
            _original_post_init(self, *args, **kwargs)
            _patch_if_selected(self)

        PreTrainedModel.post_init = post_init  # type: ignore[method-assign]  # undone by unpatch_transformers
    _class_level = selection


def _patch_if_selected(model: nn.Module) -> None:
    """Called at the end of every transformers model's construction while class-level patching is on."""
    if _class_level is None or is_patched(model):
        return
    if type(model).__name__ in _class_level:
        patch(model)  # named by the user: a model that cannot be patched is an error
    elif _ALL in _class_level:
        try:  # every QA model: the others (backbones, other heads) are left as they are
            _check_patchable(model)
        except UnsupportedModelError:
            return
        patch(model)


def unpatch_transformers() -> None:
    """Stops :func:`patch_transformers`: models built afterwards are eager. Models already built
    stay patched (:func:`unpatch` them one by one)."""
    global _class_level, _original_post_init
    if _original_post_init is not None:
        from transformers import PreTrainedModel

        PreTrainedModel.post_init = _original_post_init  # type: ignore[method-assign]
        _original_post_init = None
    _class_level = None
