"""Which parameters of a transformer encoder are prunable: the architecture table and its resolution.

The prunable set is the one of Gordon et al. (2020), "Compressing BERT": in every layer the query, key,
value, attention-output, FFN-in and FFN-out weight matrices, plus the word embeddings and the pooler
where the model has them. Biases, LayerNorms, position/type embeddings and task heads are never pruned.

Architecture knowledge is data, in one place: ``ARCHITECTURES`` maps ``config.model_type`` to an
``Architecture``: regular expressions over parameter names *relative to the base model* (``model.base_model``)
per kind, so the same table serves ``AutoModel``, ``...ForMaskedLM`` and ``...ForSequenceClassification``
alike and heads are excluded by construction (a ``(\\d+)`` group captures the layer index); where the stack of
layers is and which config attribute counts them; and where a layer's attention heads and FFN neurons are
(``Units``), for structured pruning; how its positions count and where its sentence token is. Layer dropping,
structured pruning, speed and the analyses read it too: no other module branches on a model type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from .errors import InputError

# Kinds in report order. `relative_position` is XLNet's positional projection `rel_attn.r`.
KINDS = (
    "query",
    "key",
    "value",
    "attention_output",
    "relative_position",
    "ffn_in",
    "ffn_out",
    "embeddings",
    "pooler",
)

_BERT_LIKE = {
    "query": r"encoder\.layer\.(\d+)\.attention\.self\.query\.weight",
    "key": r"encoder\.layer\.(\d+)\.attention\.self\.key\.weight",
    "value": r"encoder\.layer\.(\d+)\.attention\.self\.value\.weight",
    "attention_output": r"encoder\.layer\.(\d+)\.attention\.output\.dense\.weight",
    "ffn_in": r"encoder\.layer\.(\d+)\.intermediate\.dense\.weight",
    "ffn_out": r"encoder\.layer\.(\d+)\.output\.dense\.weight",
    "embeddings": r"embeddings\.word_embeddings\.weight",
    "pooler": r"pooler\.dense\.weight",
}

_TARGETS: dict[str, dict[str, str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,  # ELECTRA has no pooler; an absent optional kind is fine.
    "distilbert": {
        "query": r"transformer\.layer\.(\d+)\.attention\.q_lin\.weight",
        "key": r"transformer\.layer\.(\d+)\.attention\.k_lin\.weight",
        "value": r"transformer\.layer\.(\d+)\.attention\.v_lin\.weight",
        "attention_output": r"transformer\.layer\.(\d+)\.attention\.out_lin\.weight",
        "ffn_in": r"transformer\.layer\.(\d+)\.ffn\.lin1\.weight",
        "ffn_out": r"transformer\.layer\.(\d+)\.ffn\.lin2\.weight",
        "embeddings": r"embeddings\.word_embeddings\.weight",
    },
    # XLNet's attention weights are raw 3-D parameters of shape (d_model, n_head, d_head).
    "xlnet": {
        "query": r"layer\.(\d+)\.rel_attn\.q",
        "key": r"layer\.(\d+)\.rel_attn\.k",
        "value": r"layer\.(\d+)\.rel_attn\.v",
        "attention_output": r"layer\.(\d+)\.rel_attn\.o",
        "relative_position": r"layer\.(\d+)\.rel_attn\.r",
        "ffn_in": r"layer\.(\d+)\.ff\.layer_1\.weight",
        "ffn_out": r"layer\.(\d+)\.ff\.layer_2\.weight",
        "embeddings": r"word_embedding\.weight",
    },
}



@dataclass(frozen=True)
class Units:
    """Where the structural units of one layer are: attention heads and FFN neurons (paths relative to a layer).

    A slice is ``(parameter, axis, grouped)``: the unit's entries of that parameter along `axis`; `grouped` means
    the axis runs over heads x head_dim (a Linear's rows or columns), otherwise over heads alone (XLNet's 3-D
    parameters).

    Attributes:
        heads: The head slices before the output projection (Q, K, V and their biases; XLNet: also r, its biases,
            seg_embed).
        heads_out: The attention output projection's slice: a gate on a head multiplies it (importance scores).
        ffn: The FFN neuron slices before the output projection (FFN-in rows and bias).
        ffn_out: The FFN-out columns: a gate on a neuron multiplies them.
        attention: The module whose head count changes (its attribute `head_count_attr`).
        empty: The module replaced when a layer keeps no head, and the name of its output projection inside it
            (``None``: the projection stays outside it); ``None`` when the architecture cannot skip attention.
        heads_field: The config.json field holding the head count; ``head_dim_field``: the one holding the head
            dimension, where the config has one (then a uniform head count can be expressed).
        ffn_field: The config.json field holding the FFN width.
    """

    heads: tuple[tuple[str, int, bool], ...]
    heads_out: tuple[str, int, bool]
    ffn: tuple[tuple[str, int, bool], ...]
    ffn_out: tuple[str, int, bool]
    attention: str
    head_count_attr: str
    empty: tuple[str, str | None] | None
    heads_field: str
    head_dim_field: str | None
    ffn_field: str


def _linear_units(q, k, v, o, ffn_in, ffn_out, attention, count_attr, empty, heads_field, ffn_field) -> Units:
    return Units(
        heads=tuple((f"{m}.{p}", 0, True) for m in (q, k, v) for p in ("weight", "bias")), heads_out=(f"{o}.weight", 1, True),
        ffn=((f"{ffn_in}.weight", 0, False), (f"{ffn_in}.bias", 0, False)), ffn_out=(f"{ffn_out}.weight", 1, False),
        attention=attention, head_count_attr=count_attr, empty=empty, heads_field=heads_field, head_dim_field=None,
        ffn_field=ffn_field)


_BERT_UNITS = _linear_units("attention.self.query", "attention.self.key", "attention.self.value",
                            "attention.output.dense", "intermediate.dense", "output.dense", "attention.self",
                            "num_attention_heads", ("attention.self", None), "num_attention_heads", "intermediate_size")
_UNITS = {
    "bert": _BERT_UNITS,
    "roberta": _BERT_UNITS,
    "electra": _BERT_UNITS,
    "distilbert": _linear_units("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                                "ffn.lin1", "ffn.lin2", "attention", "n_heads", ("attention", "out_lin"), "n_heads",
                                "hidden_dim"),
    "xlnet": Units(
        heads=(*((f"rel_attn.{p}", 1, False) for p in ("q", "k", "v", "r", "seg_embed")),
               *((f"rel_attn.{p}", 0, False) for p in ("r_r_bias", "r_s_bias", "r_w_bias"))),
        heads_out=("rel_attn.o", 1, False),
        ffn=(("ff.layer_1.weight", 0, False), ("ff.layer_1.bias", 0, False)), ffn_out=("ff.layer_2.weight", 1, False),
        attention="rel_attn", head_count_attr="n_head", empty=None, heads_field="n_head", head_dim_field="d_head",
        ffn_field="d_inner"),
}


@dataclass(frozen=True)
class Architecture:
    """What prunelab knows of one ``model_type``.

    Attributes:
        targets: Kind -> regular expression over parameter names relative to the base model.
        layer_stack: Path of the ``ModuleList`` of transformer layers inside the base model.
        num_layers_attr: The config attribute holding the number of layers.
        units: Where a layer's heads and FFN neurons are (structured pruning).
        positions: How the position embeddings count: ``absolute`` (one per position, ``max_position_embeddings``
            of them), ``after_padding`` (RoBERTa: positions start after the padding index), ``relative`` (XLNet: no
            limit).
        sentence_token: Where the token that stands for the sentence is: ``first`` ([CLS]) or ``last`` (XLNet's
            <cls> closes the sequence).
        sequence_first: Whether the encoder layers' hidden states are ``(seq, batch, dim)`` (XLNet) rather than
            ``(batch, seq, dim)``.
    """

    targets: dict[str, str]
    layer_stack: str
    num_layers_attr: str
    units: Units
    positions: str = "absolute"
    sentence_token: str = "first"
    sequence_first: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(_TARGETS["bert"], "encoder.layer", "num_hidden_layers", _UNITS["bert"]),
    "roberta": Architecture(_TARGETS["roberta"], "encoder.layer", "num_hidden_layers", _UNITS["roberta"],
                            positions="after_padding"),
    "electra": Architecture(_TARGETS["electra"], "encoder.layer", "num_hidden_layers", _UNITS["electra"]),
    "distilbert": Architecture(_TARGETS["distilbert"], "transformer.layer", "n_layers", _UNITS["distilbert"]),
    "xlnet": Architecture(_TARGETS["xlnet"], "layer", "n_layer", _UNITS["xlnet"], positions="relative",
                          sentence_token="last", sequence_first=True),
}

# Kinds every supported model must resolve; a table entry that matches none of them is a bug, not a model.
ATTENTION_KINDS = ("query", "key", "value", "attention_output", "relative_position")  # kinds with heads
_REQUIRED_KINDS = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out", "embeddings")


@dataclass(frozen=True)
class Target:
    """One prunable weight.

    Attributes:
        name: Parameter name relative to the base model (e.g. ``encoder.layer.0.attention.self.query.weight``);
            stable across head classes, and the key of its mask in ``masks.safetensors``.
        param_name: Name of the same parameter in the model it was resolved on (with the head prefix).
        kind: One of ``KINDS``.
        layer: Layer index (0-based), or ``None`` for embeddings and pooler.
        shape: Parameter shape.
    """

    name: str
    param_name: str
    kind: str
    layer: int | None
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture(model: nn.Module) -> Architecture:
    """The table entry of `model`'s ``config.model_type``.

    Raises:
        ValueError: an unsupported model type, naming the supported ones.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise InputError(f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}")
    return ARCHITECTURES[model_type]


def max_positions(config) -> int | None:
    """The longest sequence a model of `config` takes (``None``: no limit, as with relative positions)."""
    positions = getattr(config, "max_position_embeddings", None)
    how = ARCHITECTURES[config.model_type].positions if config.model_type in ARCHITECTURES else "absolute"
    if positions is None or how == "relative":
        return None
    return positions - (config.pad_token_id + 1 if how == "after_padding" else 0)


def num_heads(model: nn.Module) -> int:
    """Attention heads per layer (transformers maps ``num_attention_heads`` to ``n_heads``/``n_head``)."""
    return int(model.config.num_attention_heads)


def kind_and_layer(name: str) -> tuple[str | None, int | None]:
    """Kind and layer of a target name by the architecture table (``(None, None)`` if no entry matches)."""
    for arch in ARCHITECTURES.values():
        for kind, pattern in arch.targets.items():
            match = re.fullmatch(pattern, name)
            if match:
                return kind, int(match.group(1)) if match.groups() else None
    return None, None


def base_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The base encoder of `model` and the prefix of its parameter names inside `model`."""
    base = getattr(model, "base_model", model)
    if base is model:
        return model, ""
    for name, module in model.named_children():
        if module is base:
            return base, name + "."
    raise InputError(f"cannot locate the base model of {type(model).__name__} among its children")


def parse_kinds(kinds: str | list[str] | tuple[str, ...] | None, what: str) -> set[str]:
    if kinds is None:
        return set()
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    items = [k.strip() for k in items if k.strip()]
    unknown = [k for k in items if k not in KINDS]
    if unknown:
        raise InputError(f"unknown kind {unknown[0]!r} in {what}; allowed: {', '.join(KINDS)}")
    return set(items)


def resolve_targets(
    model: nn.Module,
    include: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
    layers: list[int] | None = None,
) -> list[Target]:
    """Resolve the prunable targets of `model` from the architecture table.

    Args:
        model: A ``transformers`` model of a supported ``config.model_type``, any head class.
        include: Kinds to keep (comma-separated string or list); ``None`` keeps all.
        exclude: Kinds to drop, applied after `include`.
        layers: Layer indices to keep; targets without a layer (embeddings, pooler) are kept unless
            excluded by kind. ``None`` keeps all layers.

    Returns:
        Targets in parameter order (the order ties are broken in).

    Raises:
        ValueError: unknown model type or kind, a layer that does not exist, or a selection that is empty.
    """
    arch = architecture(model)
    model_type = model.config.model_type
    include_set, exclude_set = parse_kinds(include, "include"), parse_kinds(exclude, "exclude")
    table = {kind: re.compile(pattern) for kind, pattern in arch.targets.items()}
    base, prefix = base_model(model)

    found: list[Target] = []
    for name, param in base.named_parameters():  # tied parameters appear once, under their first name
        for kind, pattern in table.items():
            match = pattern.fullmatch(name)
            if match:
                layer = int(match.group(1)) if match.groups() else None
                found.append(Target(name, prefix + name, kind, layer, tuple(param.shape)))
                break

    missing = [k for k in _REQUIRED_KINDS if not any(t.kind == k for t in found)]
    if missing:
        raise InputError(
            f"the {model_type} table matched no parameter of kind {missing[0]!r} in {type(model).__name__}; "
            "the model does not follow the standard transformers layout"
        )
    num_layers = 1 + max(t.layer for t in found if t.layer is not None)
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise InputError(f"layer {bad[0]} does not exist; the model has layers 0..{num_layers - 1}")

    selected = [
        t
        for t in found
        if (not include_set or t.kind in include_set)
        and t.kind not in exclude_set
        and (layers is None or t.layer is None or t.layer in layers)
    ]
    if not selected:
        raise InputError("the include/exclude/layers selection leaves no prunable weight; widen it")
    return selected


# The axis of a target's weight that its input contracts with (N:M groups run along it): a Linear's and the word
# embeddings' last axis; XLNet's 3-D (d_model, n_head, d_head) projections contract d_model, its output o
# contracts (n_head, d_head), grouped along d_head.
_INPUT_AXIS_3D = {"attention_output": -1}


def input_axis(target: Target) -> int:
    return _INPUT_AXIS_3D.get(target.kind, 0) if len(target.shape) == 3 else -1


def get_parameter(model: nn.Module, target: Target) -> torch.nn.Parameter:
    """The live parameter of `target` in `model` (looked up by name, so never a stale reference)."""
    return model.get_parameter(target.param_name)


def split_heads(weight: torch.Tensor, kind: str, heads: int) -> torch.Tensor:
    """View an attention weight as one slice per head.

    Args:
        weight: A target of an attention kind: 2-D ``(out, in)`` of a linear layer, or XLNet's 3-D
            ``(d_model, n_head, d_head)``.
        kind: Its kind; query/key/value split their output rows, the attention output its input columns.
        heads: Number of heads.

    Returns:
        Tensor of shape ``(heads, d_head, d_other)``: head ``h``'s weights, ``d_other`` being the model
        dimension on the other side of the projection.
    """
    if kind not in ATTENTION_KINDS:
        raise InputError(f"kind {kind!r} has no heads; attention kinds: {', '.join(ATTENTION_KINDS)}")
    if weight.dim() == 3:  # XLNet: (d_model, n_head, d_head)
        return weight.permute(1, 2, 0)
    out_dim, in_dim = weight.shape
    if kind == "attention_output":  # (d_model, heads * d_head): heads are the input columns
        return weight.reshape(out_dim, heads, in_dim // heads).permute(1, 2, 0)
    return weight.reshape(heads, out_dim // heads, in_dim)
