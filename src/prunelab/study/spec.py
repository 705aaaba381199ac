"""A study spec: one TOML file, loaded strictly into typed dataclasses.

    name = "compressing-bert"
    model = "bert-base-uncased"
    sparsities = [0.0, 0.1, ...]
    regimes = ["pruned", "information_deletion", "pruned_after_finetuning", "random"]   (and more: REGIMES)
    criteria = ["magnitude"]                       (the criteria axis: see CRITERION_AXIS)
    [data]      dir, corpus, glue                  (paths relative to dir; glue = "hub" for nyu-mll/glue)
    [pretrain]  steps, prune_end, prune_every, batch_size, max_seq_len, lr, ...
    [finetune]  tasks, lrs, epochs, seeds, batch_size, max_seq_len, max_train_samples, prune_after_epochs, ...
    [layer_drop] strategies, counts                 (the layer_drop regime: Sajjad et al. 2020, "Poor Man's BERT")
    [structured] criterion, scope, heads, ffn       (the structured regime: heads and FFN neurons removed)
    [deployment] measure, batch_size, seq_len, repeats, int8, vocab (what each model run measures for the deployment table)
    [oneshot]   calibration_samples, exclude        (the oneshot regimes: the fine-tuned model pruned one-shot)
    [resources] cpus, gpus                          (per run, for the Ray executor)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from ..config import COMMAND_CRITERIA, CRITERION_NAMES, from_dict
from ..data.glue import get_task
from ..methods.kd_losses import DistillSettings
from ..methods.layer_drop import STRATEGIES
from ..methods.structured import UNIT_SCOPES
from ..scores import CRITERIA
from ..select import SCOPES
from ..errors import InputError, MissingInputError

# How each regime is planned lives in plan.REGIMES; these are their names, in the order they are documented.
REGIMES = ("pruned", "information_deletion", "pruned_after_finetuning", "random", "layer_drop", "structured", "adapt",
           "distill", "pruned_during_finetuning", "oneshot", "oneshot_finetuned")
# The criteria axis: a regime named here runs once per criterion of the spec's ``criteria`` that the command doing
# its pruning takes (``config.COMMAND_CRITERIA``); the other regimes have their own (random, structured) or none.
CRITERION_AXIS = {"pruned": "prunelab pretrain", "information_deletion": "prunelab pretrain",
                  "pruned_after_finetuning": "prunelab finetune", "distill": "prunelab distill-prune",
                  "pruned_during_finetuning": "prunelab distill-prune", "oneshot": "prunelab prune",
                  "oneshot_finetuned": "prunelab prune"}
PRUNED_IN_PRETRAINING = ("pruned", "information_deletion", "random")  # their models are pruned while pre-training
STUDY_UNIT_CRITERIA = ("magnitude", "random")  # the structured regime's: no task data needed
DEFAULT_REGIMES = ("pruned", "information_deletion", "pruned_after_finetuning", "random")  # the paper's four


@dataclass
class DataSpec:
    dir: str | None = None  # default: $PRUNELAB_DATA
    corpus: list[str] = field(default_factory=lambda: ["wikitext-2/train.txt"])
    dev_corpus: list[str] = field(default_factory=lambda: ["wikitext-2/valid.txt"])
    glue: str = "glue"
    hub_corpus: str = "Salesforce/wikitext:wikitext-2-raw-v1"  # used when no data directory is given


SEED_RANGE = (0, 2**32 - 1)


@dataclass
class PretrainSpec:
    RANGES: ClassVar[dict] = {"steps": (0, None), "prune_end": (1, None), "prune_every": (1, None), "batch_size": (1, None),
                              "max_seq_len": (8, None), "lr": (0, None), "head_warmup_steps": (0, None),
                              "max_train_lines": (1, None), "max_dev_blocks": (1, None)}
    OPEN: ClassVar[tuple] = ("lr",)

    steps: int = 1000  # 0: no pre-training, the model as it is (regimes that start from the dense model only)
    prune_end: int | None = None
    prune_every: int = 10
    batch_size: int = 32
    max_seq_len: int = 128
    lr: float = 5e-5
    head_warmup_steps: int = 0
    max_train_lines: int | None = None
    max_dev_blocks: int = 512


@dataclass
class FinetuneSpec:
    RANGES: ClassVar[dict] = {"lrs": (0, None), "epochs": (0, None), "seeds": SEED_RANGE, "batch_size": (1, None),
                              "max_seq_len": (8, None), "max_train_samples": (1, None), "prune_after_epochs": (0, None),
                              "epochs_after_pruning": (0, None)}
    OPEN: ClassVar[tuple] = ("lrs", "epochs", "prune_after_epochs", "epochs_after_pruning")
    NONEMPTY: ClassVar[tuple] = ("tasks", "lrs", "seeds")

    tasks: list[str] = field(default_factory=lambda: ["CoLA", "SST-2", "MRPC", "STS-B", "QNLI"])
    lrs: list[float] = field(default_factory=lambda: [2e-5, 3e-5, 4e-5, 5e-5])
    epochs: float = 3.0
    seeds: list[int] = field(default_factory=lambda: [42])
    batch_size: int = 32
    max_seq_len: int = 128
    max_train_samples: int | None = None
    prune_after_epochs: float = 3.0
    epochs_after_pruning: float = 5.0


@dataclass
class LayerDropSpec:
    """The layer_drop regime: per strategy x count, that many layers dropped from the dense pre-trained model."""

    CHECKED: ClassVar[tuple] = ("strategies", "counts")  # by _check_layer_drop, with the whole list in view

    strategies: list[str] = field(default_factory=lambda: ["top", "bottom", "alternate-even", "symmetric", "contribution"])
    counts: list[int] = field(default_factory=lambda: [2, 4])


@dataclass
class StructuredSpec:
    """The structured regime: per position i, ``heads[i]`` of the attention heads and ``ffn[i]`` of the FFN neurons
    removed from the dense pre-trained model by `criterion` (``magnitude`` or ``random``: the study's models are
    pruned once for every task) over `scope`, then fine-tuned like the dense model."""

    CHECKED: ClassVar[tuple] = ("criterion", "scope", "heads", "ffn")  # by _check_structured, the lists side by side

    criterion: str = "magnitude"
    scope: str = "layer"
    heads: list[float] = field(default_factory=lambda: [0.25, 0.5])
    ffn: list[float] = field(default_factory=lambda: [0.25, 0.5])


@dataclass
class DeploymentSpec:
    """What every run that makes a model (pre-training, layer dropping, structured pruning) measures of it, on the
    machine that ran it: its bytes as a compressed artifact, and its CPU forward latency at batch_size x seq_len
    with the best execution ``sparse_execution`` finds, beside an identical copy (the noise floor). With `int8`, also
    its encoder exported to ONNX and quantized to INT8 (``deploy.quantize``): that file's bytes and latency, timed
    in the same interleaved rounds. With `vocab`, also the model with its vocabulary cut to the text of the
    study's tasks' training splits (``deploy.vocab``): its bytes as a compressed artifact and its latency."""

    RANGES: ClassVar[dict] = {"batch_size": (1, None), "seq_len": (1, None), "repeats": (1, None)}

    measure: bool = True
    batch_size: int = 8
    seq_len: int = 128
    repeats: int = 5
    int8: bool = False
    vocab: bool = False


@dataclass
class AdaptSpec:
    """The adapt regime (Gao et al. 2021): masks learned over the frozen dense pre-trained model, per sparsity.

    `lrs` are the scores' learning rates (the grid the report takes the best of); `exact` prunes exactly the
    target sparsity at the end, so cells compare with the other regimes' at equal sparsity."""

    RANGES: ClassVar[dict] = {"lrs": (0, None), "head_lr": (0, None), "penalty": (0, None), "ramp": (0, 1), "band": (0, None),
                              "epochs": (0, None)}
    OPEN: ClassVar[tuple] = ("lrs", "head_lr", "epochs")

    lrs: list[float] = field(default_factory=lambda: [1e-3])
    head_lr: float = 1e-3
    penalty: float = 1e-8
    ramp: float = 0.5
    band: float = 0.01
    exact: bool = True
    epochs: float | None = None  # default: [finetune] epochs


@dataclass
class DistillSpec(DistillSettings):
    """The distill regime (Xu et al. 2021): the dense pre-trained model pruned (cubic) while fine-tuning, taught
    by the dense model fine-tuned on the task (a ``teacher`` run per task x seed); pruned_during_finetuning is
    the same without the teacher. Learning rates and epochs are [finetune]'s."""

    RANGES: ClassVar[dict] = {"temperature": (0, None), "alpha_attention": (0, None), "alpha_hidden": (0, None),
                              "alpha_logits": (0, None), "alpha_hard": (0, None), "prune_start": (0, 1), "prune_end": (0, 1), "prune_every": (1, None)}
    OPEN: ClassVar[tuple] = ("temperature", "prune_end")


@dataclass
class OneshotSpec:
    """The oneshot regimes: the dense pre-trained model fine-tuned on the task (its ``teacher`` run) pruned one-shot by
    each criterion, scored as it is (oneshot) and after ``[finetune] epochs_after_pruning`` more epochs with its masks
    held (oneshot_finetuned). Wanda and SparseGPT calibrate on `calibration_samples` training examples of the task;
    `exclude` names the target kinds left dense (default: the encoder's linear layers only, as the papers prune)."""

    RANGES: ClassVar[dict] = {"calibration_samples": (1, None)}

    calibration_samples: int = 128
    exclude: list[str] = field(default_factory=lambda: ["embeddings", "pooler"])


@dataclass
class Resources:
    RANGES: ClassVar[dict] = {"cpus": (0, None), "gpus": (0, None)}

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class StudySpec:
    RANGES: ClassVar[dict] = {"sparsities": (0, 1)}
    NONEMPTY: ClassVar[tuple] = ("sparsities", "regimes")

    name: str
    model: str
    sparsities: list[float]
    regimes: list[str] = field(default_factory=lambda: list(DEFAULT_REGIMES))
    criterion: str = "magnitude"
    criteria: list[str] | None = None  # default: [criterion]
    scope: str = "matrix"
    data: DataSpec = field(default_factory=DataSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    layer_drop: LayerDropSpec = field(default_factory=LayerDropSpec)
    structured: StructuredSpec = field(default_factory=StructuredSpec)
    deployment: DeploymentSpec = field(default_factory=DeploymentSpec)
    adapt: AdaptSpec = field(default_factory=AdaptSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    oneshot: OneshotSpec = field(default_factory=OneshotSpec)
    resources: Resources = field(default_factory=Resources)
    source: str = ""

    def __post_init__(self) -> None:
        where = f" in {self.source}" if self.source else ""
        bad = [s for s in self.sparsities if not 0.0 <= s <= 1.0]
        if not self.sparsities or bad:
            raise InputError(f"sparsities{where} must be a non-empty list of fractions in [0, 1]; got {self.sparsities}")
        unknown = [r for r in self.regimes if r not in REGIMES]
        if unknown or not self.regimes:
            raise InputError(f"unknown regime {unknown[0] if unknown else None!r}{where}; allowed: {', '.join(REGIMES)}")
        if self.criterion not in CRITERIA or self.scope not in SCOPES:
            raise InputError(f"criterion {self.criterion!r} / scope {self.scope!r}{where}: allowed criteria "
                             f"{', '.join(sorted(CRITERIA))}, scopes {', '.join(SCOPES)}")
        self._check_criteria(where)
        pruned_in_pretraining = [r for r in self.regimes if r in PRUNED_IN_PRETRAINING]
        if self.pretrain.steps == 0 and pruned_in_pretraining and any(s > 0 for s in self.sparsities):
            raise InputError(f"[pretrain] steps = 0{where} leaves nothing to prune during pre-training, which regime "
                             f"{pruned_in_pretraining[0]!r} does; give steps >= 1 or drop the regime")
        for task in self.finetune.tasks:
            try:
                get_task(task)
            except ValueError as err:
                raise InputError(f"[finetune] tasks{where}: {err}") from None
        if not self.finetune.lrs or not self.finetune.seeds:
            raise InputError(f"[finetune] lrs and seeds{where} must not be empty")
        self._check_layer_drop(where)
        self._check_structured(where)
        if self.distill.prune_start >= self.distill.prune_end:
            raise InputError(f"[distill] prune_start {self.distill.prune_start}{where} must be below prune_end "
                             f"{self.distill.prune_end}: pruning starts at the one and reaches the sparsity at the other")
        if not self.adapt.lrs or any(lr <= 0 for lr in self.adapt.lrs):
            raise InputError(f"[adapt] lrs{where} must be a non-empty list of positive learning rates, e.g. [1e-3]")

    def _check_criteria(self, where: str) -> None:
        if self.criteria is None:
            self.criteria = [self.criterion]
        if not isinstance(self.criteria, list) or not self.criteria or len(set(self.criteria)) < len(self.criteria) or \
                any(c not in CRITERION_NAMES for c in self.criteria):
            raise InputError(f"criteria {self.criteria!r}{where}: give a non-empty list without repeats from "
                             f"{', '.join(CRITERION_NAMES)}")
        axis = [r for r in self.regimes if r in CRITERION_AXIS]
        for c in self.criteria if self.criteria != [self.criterion] else []:  # the default needs no regime to take it
            if not any(c in COMMAND_CRITERIA[CRITERION_AXIS[r]] for r in axis):
                takes = sorted(r for r, command in CRITERION_AXIS.items() if c in COMMAND_CRITERIA[command])
                raise InputError(f"criterion {c!r} in criteria{where} applies to none of the regimes {', '.join(self.regimes)}; "
                                 f"add one that takes it ({', '.join(takes)}) or drop it")
        for r in axis:
            if not regime_criteria(self, r):
                raise InputError(f"regime {r!r}{where} takes none of criteria {self.criteria}; add one of "
                                 f"{', '.join(COMMAND_CRITERIA[CRITERION_AXIS[r]])} or drop the regime")
        try:
            from ..targets import parse_kinds

            parse_kinds(self.oneshot.exclude, "[oneshot] exclude")
        except InputError as err:
            raise InputError(f"{err}{where}") from None

    def _check_layer_drop(self, where: str) -> None:
        strategies, counts = self.layer_drop.strategies, self.layer_drop.counts
        for key, value in (("strategies", strategies), ("counts", counts)):
            if not isinstance(value, list):
                raise InputError(f"[layer_drop] {key}{where} must be a list (got {value!r})")
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or not strategies or len(set(strategies)) < len(strategies):
            got = f"unknown strategy {unknown[0]!r}" if unknown else f"got {strategies}"
            raise InputError(f"[layer_drop] strategies{where}: {got}; give a non-empty list without repeats "
                             f"from {', '.join(STRATEGIES)}")
        bad = [c for c in counts if isinstance(c, bool) or not isinstance(c, int) or c < 1]
        if bad or not counts or len(set(counts)) < len(counts):
            got = f"count {bad[0]!r}" if bad else f"got {counts}"
            raise InputError(f"[layer_drop] counts{where}: {got}; give a non-empty list without repeats of whole "
                             "numbers >= 1 (layers to drop, fewer than the model has)")

    def _check_structured(self, where: str) -> None:
        st = self.structured
        if st.criterion not in STUDY_UNIT_CRITERIA or st.scope not in UNIT_SCOPES:
            raise InputError(f"[structured] criterion {st.criterion!r} / scope {st.scope!r}{where}: allowed criteria "
                             f"{', '.join(STUDY_UNIT_CRITERIA)} (importance and from-masks: prunelab prune-structured), "
                             f"scopes {', '.join(UNIT_SCOPES)}")
        pairs = (st.heads, st.ffn)
        if any(not isinstance(v, list) for v in pairs) or len(st.heads) != len(st.ffn) or not st.heads or any(
                isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1 for v in pairs for f in v) or \
                len(set(zip(st.heads, st.ffn))) < len(st.heads):
            raise InputError(f"[structured] heads {st.heads!r} and ffn {st.ffn!r}{where}: give two lists of the same "
                             "length of fractions in [0, 1] (model i removes heads[i] and ffn[i]), no pair twice")
        if any(h >= 1 for h in st.heads):
            raise InputError(f"[structured] heads{where}: 1.0 removes every head; the study keeps one per layer, "
                             "so use fractions below 1")

    def data_dir(self, override: str | None = None) -> Path | None:
        """The data root: `override`, else ``[data] dir``, else ``$PRUNELAB_DATA``."""
        chosen = override or self.data.dir or os.environ.get("PRUNELAB_DATA")
        if not chosen:
            return None
        base = Path(self.source).parent if self.source and not Path(chosen).is_absolute() and not override else Path(".")
        return (base / os.path.expandvars(chosen)).resolve()


def regime_criteria(spec: StudySpec, regime: str) -> list[str]:
    """The criteria `regime` runs with: those of ``spec.criteria`` its command takes (``CRITERION_AXIS``)."""
    return [c for c in spec.criteria if c in COMMAND_CRITERIA[CRITERION_AXIS[regime]]]


# An absent section takes its defaults, so a study.json written before a section existed still opens.
SECTIONS = {"data": DataSpec, "pretrain": PretrainSpec, "finetune": FinetuneSpec, "layer_drop": LayerDropSpec,
            "structured": StructuredSpec, "deployment": DeploymentSpec, "adapt": AdaptSpec, "distill": DistillSpec, "oneshot": OneshotSpec, "resources": Resources}


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read a study TOML strictly: an unknown key or section is an error naming it and the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"study spec {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path} is not valid TOML: {err}") from None
    sections = {}
    for name, cls in SECTIONS.items():
        table = raw.pop(name, {})
        if not isinstance(table, dict):
            raise InputError(f"[{name}] in {path} must be a table")
        sections[name] = from_dict(cls, table, str(path), section=name)
    for key in ("name", "model", "sparsities"):
        if key not in raw:
            raise InputError(f"{path} lacks the required key {key!r}")
    return from_dict(StudySpec, {**raw, **sections, "source": str(path)}, str(path))


def spec_dict(spec: StudySpec) -> dict:
    return dataclasses.asdict(spec)
