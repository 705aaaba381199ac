"""Structured pruning: remove whole attention heads and FFN neurons, so that the weight matrices really shrink.

A head is its rows of Q, K and V (with their biases) and its columns of the attention output; an FFN neuron is a
row of FFN-in with its bias and the matching column of FFN-out. Where they are in a layer is data in the
architecture table (``targets.Units``); XLNet's 3-D attention parameters carry the head axis directly.

Criteria (``UNIT_CRITERIA``), each a function returning one score per unit (``{"heads": [tensor per layer], "ffn": ...}``;
the lowest scores are removed):
    magnitude   L2 norm of the unit's weights
    random      seeded uniform scores
    importance  Michel et al. (2019), "Are Sixteen Heads Really Better than One?": E |dL/dgate| of a gate on the
                unit over a data sample, normalised per layer. A gate multiplies the unit's slice of the output
                projection, so dL/dgate = sum(w * dL/dw) over that slice (no hooks needed)
    from-masks  the kept fraction of the unit's weights under an unstructured mask: units pruned to at least a
                threshold are removed

Removal keeps the function: the pruned model computes what the full model computes with the removed units'
gates at zero. ``structure`` reads the per-layer head counts and FFN widths off a model; ``apply_unit_counts`` gives
a freshly built model those shapes, which is how a saved model loads back.
"""

from __future__ import annotations

import torch
from torch import nn

from ..targets import Units, architecture, base_model
from .._moved import forwarder
from ..errors import InputError

UNIT_KINDS = ("heads", "ffn")
UNIT_SCOPES = ("layer", "global")  # one ranking per layer, or one over the model (select.SCOPES: per matrix/global)
UNIT_CRITERIA = ("magnitude", "random", "importance", "from-masks")  # names (scores.CRITERIA: weight scores)


def units_of(model: nn.Module) -> Units:
    return architecture(model).units


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    base = base_model(model)[0]
    return list(base.get_submodule(architecture(model).layer_stack))


def head_dim(model: nn.Module) -> int:
    units = units_of(model)
    if units.head_dim_field:
        return int(getattr(model.config, units.head_dim_field))
    return int(model.config.hidden_size) // int(model.config.num_attention_heads)


def _slices(units: Units, kind: str) -> tuple[tuple[str, int, bool], ...]:
    return (*units.heads, units.heads_out) if kind == "heads" else (*units.ffn, units.ffn_out)


def _param(layer: nn.Module, path: str) -> tuple[nn.Module, str, nn.Parameter | None]:
    module_path, _, name = path.rpartition(".")
    try:
        module = layer.get_submodule(module_path) if module_path else layer
    except AttributeError:  # an attention block skipped for having no head
        return layer, name, None
    return module, name, getattr(module, name, None)


def _by_unit(tensor: torch.Tensor, axis: int, grouped: bool, hd: int) -> torch.Tensor:
    """`tensor` as ``[units, -1]``: its unit axis first, everything else flattened."""
    t = tensor.unflatten(axis, (-1, hd)) if grouped else tensor
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def unit_counts(model: nn.Module) -> dict[str, list[int]]:
    """Heads and FFN neurons of every layer, read off the parameter shapes."""
    units, hd = units_of(model), head_dim(model)
    counts: dict[str, list[int]] = {"heads": [], "ffn": []}
    for layer in encoder_layers(model):
        for kind, (path, axis, grouped) in (("heads", units.heads_out), ("ffn", units.ffn_out)):
            weight = _param(layer, path)[2]
            counts[kind].append(0 if weight is None else weight.shape[axis] // (hd if grouped else 1))
    return counts


def unit_tensors(model: nn.Module, layer_index: int, kind: str) -> list[torch.Tensor]:
    """The ``[units, -1]`` views of one layer's slices of `kind`."""
    units, hd = units_of(model), head_dim(model)
    layer = encoder_layers(model)[layer_index]
    params = (_param(layer, path)[2] for path, _, _ in _slices(units, kind))
    return [_by_unit(p, axis, grouped, hd) for p, (_, axis, grouped) in zip(params, _slices(units, kind)) if p is not None]


# -- criteria ---------------------------------------------------------------------------------------


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """L2 norm of each unit's weights (all its slices)."""
    return {kind: [torch.sqrt(sum(t.detach().float().pow(2).sum(1) for t in unit_tensors(model, i, kind)))
                   for i in range(len(encoder_layers(model)))] for kind in UNIT_KINDS}


def random_scores(model: nn.Module, seed: int) -> dict[str, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    counts = unit_counts(model)
    return {kind: [torch.rand(n, generator=generator) for n in counts[kind]] for kind in UNIT_KINDS}


def importance_scores(model: nn.Module, batches) -> dict[str, list[torch.Tensor]]:
    """Michel et al.'s head importance, for heads and FFN neurons: the mean over `batches` (dicts of model inputs
    with labels) of |dL/dgate|, where a gate multiplies the unit's slice of the output projection, normalised to
    unit L2 norm per layer. The model's parameters are not changed; their gradients are cleared after."""
    units, hd, n = units_of(model), head_dim(model), len(encoder_layers(model))
    device = next(model.parameters()).device  # sums and batches where the model is (CPU or an accelerator)
    sums = {kind: [torch.zeros(c, device=device) for c in unit_counts(model)[kind]] for kind in UNIT_KINDS}
    was_training, count = model.training, 0
    model.eval()  # no dropout: the gradient of the model that will be pruned
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}).loss
            if loss is None:
                raise InputError("importance needs labels: the batches must carry them")
            loss.backward()
            for kind, (path, axis, grouped) in (("heads", units.heads_out), ("ffn", units.ffn_out)):
                for i in range(n):
                    param = _param(encoder_layers(model)[i], path)[2]
                    if param is None or param.grad is None:
                        continue
                    gate = (_by_unit(param.detach(), axis, grouped, hd) * _by_unit(param.grad, axis, grouped, hd)).sum(1)
                    sums[kind][i] += gate.abs().float()
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise InputError("importance needs at least one batch of task data")
    return {kind: [(s / count / max(float(torch.linalg.vector_norm(s / count)), 1e-20)).cpu() for s in sums[kind]]
            for kind in UNIT_KINDS}


@torch.no_grad()
def mask_scores(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """The kept fraction of each unit's weights under `masks` (keyed by target name, relative to the base model),
    over the slices the masks cover (1.0 for a unit no mask covers)."""
    units, hd = units_of(model), head_dim(model)
    base = base_model(model)[0]
    names = {id(p): name for name, p in base.named_parameters()}
    scores: dict[str, list[torch.Tensor]] = {kind: [] for kind in UNIT_KINDS}
    counts = unit_counts(model)
    for layer in encoder_layers(model):
        for kind in UNIT_KINDS:
            kept = total = None
            for path, axis, grouped in _slices(units, kind):
                param = _param(layer, path)[2]
                mask = masks.get(names.get(id(param), "")) if param is not None else None
                if mask is None:
                    continue
                by_unit = _by_unit(mask.to(torch.float32), axis, grouped, hd)
                kept = by_unit.sum(1) if kept is None else kept + by_unit.sum(1)
                total = by_unit.shape[1] if total is None else total + by_unit.shape[1]
            count = counts[kind][len(scores[kind])]
            scores[kind].append(torch.ones(count) if kept is None else kept / total)
    return scores


# -- which units go ---------------------------------------------------------------------------------


def choose(scores: list[torch.Tensor], sparsity: float, scope: str, min_keep: int = 0) -> list[list[int]]:
    """The kept unit indices of each layer: the round(sparsity x units) lowest-scored removed, per layer
    (``scope="layer"``) or over all layers (``"global"``, exactly that many in all), each layer keeping at least
    `min_keep` (its best) units.

    Raises:
        ValueError: a sparsity outside [0, 1], an unknown scope, or a sparsity that leaves a layer below `min_keep`.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity {sparsity} must be in [0, 1]")
    if scope not in UNIT_SCOPES:
        raise InputError(f"unknown scope {scope!r}; allowed: {', '.join(UNIT_SCOPES)}")
    counts = [len(s) for s in scores]
    if scope == "layer":
        removed = [round(sparsity * n) for n in counts]
        if any(n - r < min(min_keep, n) for n, r in zip(counts, removed)):
            raise InputError(f"removing {sparsity:.0%} of the units of every layer leaves a layer with fewer than "
                             f"{min_keep}")
        order = [torch.argsort(s, stable=True) for s in scores]
        return [sorted(o[r:].tolist()) for o, r in zip(order, removed)]
    total = round(sparsity * sum(counts))
    if sum(counts) - total < sum(min(min_keep, n) for n in counts):
        raise InputError(f"removing {sparsity:.0%} of all units leaves a layer with fewer than {min_keep}")
    protected = {(i, int(torch.argsort(s, descending=True, stable=True)[j])) for i, s in enumerate(scores)
                 for j in range(min(min_keep, len(s)))}
    ranked = sorted(((float(v), i, j) for i, s in enumerate(scores) for j, v in enumerate(s.tolist())
                     if (i, j) not in protected))
    gone = {(i, j) for _, i, j in ranked[:total]}
    return [[j for j in range(n) if (i, j) not in gone] for i, n in enumerate(counts)]


def prune_units(model: nn.Module, *, heads: float = 0.0, ffn: float = 0.0, criterion: str = "magnitude",
                scope: str = "layer", seed: int = 0, batches=None, masks: dict[str, torch.Tensor] | None = None,
                min_sparsity: float | None = None, allow_empty_attention: bool = False,
                threshold: float | None = None) -> dict[str, list[list[int]]]:
    """Score the heads and FFN neurons of `model` by `criterion`, remove the `heads` and `ffn` sparsities of them
    (``from-masks``: every unit whose weights `masks` prune to at least `min_sparsity`; `threshold` is its old
    name, deprecated) in place, and return the kept
    indices of each layer (of the model as it was). `batches` (inputs with labels) feed ``importance``.

    Raises:
        ValueError: an unknown criterion or scope, a sparsity outside [0, 1], ``importance`` without batches,
            ``from-masks`` without masks or `min_sparsity`, or every head of a layer removed without `allow_empty_attention`.
    """
    if criterion not in UNIT_CRITERIA:
        raise InputError(f"unknown structured criterion {criterion!r}; allowed: {', '.join(UNIT_CRITERIA)}")
    min_heads = 0 if allow_empty_attention else 1
    if threshold is not None:
        import warnings

        warnings.warn("prune_units(threshold=...) is now min_sparsity=...; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        min_sparsity = threshold if min_sparsity is None else min_sparsity
    if criterion == "from-masks":
        if not masks or min_sparsity is None or not 0.0 <= min_sparsity <= 1.0:
            raise InputError("from-masks needs a model with masks (a pruned artifact) and --threshold in [0, 1]")
        kept = mask_scores(model, masks)
        keep = {kind: [[j for j, k in enumerate(s.tolist()) if 1.0 - k < min_sparsity] for s in kept[kind]]
                for kind in UNIT_KINDS}
        for i, s in enumerate(kept["heads"]):  # at least the least-pruned head
            if len(keep["heads"][i]) < min(min_heads, len(s)):
                keep["heads"][i] = [int(torch.argmax(s))]
    else:
        if criterion == "importance" and batches is None:
            raise InputError("the importance criterion needs task data: give --task (and --data-dir)")
        scores = {"magnitude": lambda: magnitude_scores(model), "random": lambda: random_scores(model, seed),
                  "importance": lambda: importance_scores(model, batches)}[criterion]()
        try:
            keep = {"heads": choose(scores["heads"], heads, scope, min_heads)}
        except ValueError as err:
            raise InputError(f"heads: {err}" + ("; pass allow_empty_attention (--allow-empty-attention) to skip "
                                                "attention in such layers" if min_heads else "")) from None
        keep["ffn"] = choose(scores["ffn"], ffn, scope)
    remove_units(model, keep)
    return keep


# -- removal ----------------------------------------------------------------------------------------


class EmptyAttention(nn.Module):
    """An attention block with no head: its output is the output projection's bias (or zeros without one)."""

    def __init__(self, out_name: str | None = None, out: nn.Linear | None = None):
        super().__init__()
        self.out_name = out_name
        if out_name is not None:
            setattr(self, out_name, out)

    def forward(self, hidden_states, *args, **kwargs):
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        return (getattr(self, self.out_name)(context) if self.out_name else context), None


def _keep_slices(layer: nn.Module, slices, index: torch.Tensor, hd: int) -> None:
    for path, axis, grouped in slices:
        module, name, param = _param(layer, path)
        if param is None:
            continue
        rows = (index[:, None] * hd + torch.arange(hd)).reshape(-1) if grouped else index
        new = nn.Parameter(param.detach().index_select(axis, rows.to(param.device)).clone(),
                           requires_grad=param.requires_grad)
        setattr(module, name, new)
        if isinstance(module, nn.Linear) and name == "weight":
            module.out_features, module.in_features = new.shape
        elif isinstance(module, nn.Linear):  # its bias
            module.out_features = new.shape[0]


@torch.no_grad()
def remove_units(model: nn.Module, keep: dict[str, list[list[int]]]) -> nn.Module:
    """Remove, in place, every head and FFN neuron not in `keep` (``{"heads"|"ffn": [kept indices per layer]}``;
    a kind absent keeps everything). A layer keeping no head has its attention block replaced by
    ``EmptyAttention``. Returns `model`.

    Raises:
        ValueError: an index out of range, or no head kept where the architecture cannot skip attention.
    """
    units, hd = units_of(model), head_dim(model)
    counts = unit_counts(model)
    for kind, per_layer in keep.items():
        if kind not in UNIT_KINDS or len(per_layer) != len(counts[kind]):
            raise InputError(f"keep[{kind!r}] must list the kept units of each of the {len(counts.get(kind, []))} layers")
        for i, kept in enumerate(per_layer):
            if any(not 0 <= j < counts[kind][i] for j in kept) or len(set(kept)) != len(kept):
                raise InputError(f"layer {i}: kept {kind} {kept} are not distinct indices below {counts[kind][i]}")
            if kind == "heads" and not kept and units.empty is None:
                raise InputError(f"{model.config.model_type} cannot skip attention: keep at least one head per layer")
    for i, layer in enumerate(encoder_layers(model)):
        if "heads" in keep and len(keep["heads"][i]) < counts["heads"][i]:
            index = torch.tensor(sorted(keep["heads"][i]), dtype=torch.long)
            _keep_slices(layer, (*units.heads, units.heads_out), index, hd)
            attention = layer.get_submodule(units.attention)
            setattr(attention, units.head_count_attr, len(index))
            if hasattr(attention, "all_head_size"):
                attention.all_head_size = len(index) * hd
            if len(index) == 0:
                path, out_name = units.empty
                parent_path, _, child = path.rpartition(".")
                old = layer.get_submodule(path)
                parent = layer.get_submodule(parent_path) if parent_path else layer
                setattr(parent, child, EmptyAttention(out_name, getattr(old, out_name) if out_name else None))
        if "ffn" in keep and len(keep["ffn"][i]) < counts["ffn"][i]:
            _keep_slices(layer, (*units.ffn, units.ffn_out), torch.tensor(sorted(keep["ffn"][i]), dtype=torch.long), 1)
    return model


def varying_unit_counts(model: nn.Module) -> dict[str, list[int]] | None:
    """Per-layer head counts and FFN widths where they differ from what the config gives every layer, else None."""
    counts = unit_counts(model)
    units = units_of(model)
    full = {"heads": int(getattr(model.config, units.heads_field)), "ffn": int(getattr(model.config, units.ffn_field))}
    return counts if any(c != full[kind] for kind in UNIT_KINDS for c in counts[kind]) else None


def apply_unit_counts(model: nn.Module, record: dict[str, list[int]]) -> nn.Module:
    """Give a model built from the full config the per-layer shapes of `record` (weights to be loaded after)."""
    counts = unit_counts(model)
    keep = {}
    for kind in UNIT_KINDS:
        wanted = record.get(kind)
        if not isinstance(wanted, list) or len(wanted) != len(counts[kind]) or \
                any(not isinstance(n, int) or not 0 <= n <= full for n, full in zip(wanted, counts[kind])):
            raise InputError(f"prunelab_structure[{kind!r}] must give 0..{max(counts[kind])} units for each of the "
                             f"{len(counts[kind])} layers; got {wanted!r}")
        keep[kind] = [list(range(n)) for n in wanted]
    return remove_units(model, keep)


# -- config.json ------------------------------------------------------------------------------------

UNIT_COUNTS_KEY = "prunelab_structure"
MARKER = ("varies per layer (structured pruning by prunelab): load this model with prunelab.from_pretrained(DIR), "
          "or export it with `prunelab export-onnx DIR --out FILE`")


def saved_config(config: dict, model: nn.Module) -> dict:
    """The config.json content for `model` (`config`: what ``save_pretrained`` wrote).

    An FFN width the same in every layer is written in the config's own field, which plain ``transformers``
    reads. Any other structure (heads removed: no config of these architectures can say so) goes to
    ``prunelab_structure`` (per-layer counts, and the fields' full values), and the fields that cannot hold it are
    set to a sentence saying how to load the model: plain ``transformers`` then refuses the config with that
    sentence rather than load weights into the wrong shapes.
    """
    config = {k: v for k, v in config.items() if k != UNIT_COUNTS_KEY}
    record = varying_unit_counts(model)
    if record is None:
        return config
    units = units_of(model)
    full = {"heads": config[units.heads_field], "ffn": config[units.ffn_field]}
    heads_ok = set(record["heads"]) == {full["heads"]}
    ffn_ok = len(set(record["ffn"])) == 1 and record["ffn"][0] > 0
    if heads_ok and ffn_ok:
        config[units.ffn_field] = record["ffn"][0]
        return config
    config[UNIT_COUNTS_KEY] = {**record, units.heads_field: full["heads"], units.ffn_field: full["ffn"]}
    for ok, field in ((heads_ok, units.heads_field), (ffn_ok, units.ffn_field)):
        if not ok:
            config[field] = MARKER
    return config


def loadable_config(config: dict) -> tuple[dict, dict[str, list[int]] | None]:
    """A config.json content ``saved_config`` wrote, with the full values back in its fields, and its per-layer
    structure (``None`` for a config without one).

    Raises:
        ValueError: a ``prunelab_structure`` that is not the one ``saved_config`` writes.
    """
    from ..targets import ARCHITECTURES

    record = config.get(UNIT_COUNTS_KEY)
    if record is None:
        return config, None
    units = ARCHITECTURES[config.get("model_type")].units if config.get("model_type") in ARCHITECTURES else None
    fields = (units.heads_field, units.ffn_field) if units else ()
    if not isinstance(record, dict) or any(not isinstance(record.get(f), int) for f in fields) or \
            any(not isinstance(record.get(kind), list) for kind in UNIT_KINDS) or units is None:
        raise InputError(f"{UNIT_COUNTS_KEY} in config.json must hold 'heads' and 'ffn' lists and the full "
                         f"{' and '.join(fields) or 'sizes'}; re-save the model with prunelab")
    restored = {**config, **{f: record[f] for f in fields}, UNIT_COUNTS_KEY: {k: record[k] for k in UNIT_KINDS}}
    return restored, restored[UNIT_COUNTS_KEY]


# Old names (deprecated: removed in the next release); each also meant something else elsewhere.
__getattr__ = forwarder(__name__, [], {"SCOPES": (__name__, "UNIT_SCOPES"), "CRITERIA": (__name__, "UNIT_CRITERIA"),
                                       "STRUCTURE_KEY": (__name__, "UNIT_COUNTS_KEY"),
                                       "apply_structure": (__name__, "apply_unit_counts"),
                                       "structure": (__name__, "varying_unit_counts"), "layers": (__name__, "encoder_layers")})
