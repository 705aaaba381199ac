"""A study spec: one TOML file, loaded strictly into typed dataclasses.

    name = "compressing-bert"
    model = "bert-base-uncased"
    sparsities = [0.0, 0.1, ...]
    regimes = ["pruned", "information_deletion", "pruned_after_finetuning", "random"]
    [data]      dir, corpus, glue                  (paths relative to dir; glue = "hub" for nyu-mll/glue)
    [pretrain]  steps, prune_end, prune_every, batch_size, max_seq_len, lr, ...
    [finetune]  tasks, lrs, epochs, seeds, batch_size, max_seq_len, max_train_samples, prune_after_epochs, ...
    [resources] cpus, gpus                          (per run, for the Ray executor)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict
from ..glue import get_task
from ..scores import CRITERIA
from ..select import SCOPES

REGIMES = ("pruned", "information_deletion", "pruned_after_finetuning", "random")


@dataclass
class DataSpec:
    dir: str | None = None  # default: $PRUNELAB_DATA
    corpus: list[str] = field(default_factory=lambda: ["wikitext-2/train.txt"])
    dev_corpus: list[str] = field(default_factory=lambda: ["wikitext-2/valid.txt"])
    glue: str = "glue"
    hub_corpus: str = "Salesforce/wikitext:wikitext-2-raw-v1"  # used when no data directory is given


@dataclass
class PretrainSpec:
    steps: int = 1000
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
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class StudySpec:
    name: str
    model: str
    sparsities: list[float]
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    criterion: str = "magnitude"
    scope: str = "matrix"
    data: DataSpec = field(default_factory=DataSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    resources: Resources = field(default_factory=Resources)
    source: str = ""

    def __post_init__(self) -> None:
        where = f" in {self.source}" if self.source else ""
        bad = [s for s in self.sparsities if not 0.0 <= s <= 1.0]
        if not self.sparsities or bad:
            raise ValueError(f"sparsities{where} must be a non-empty list of fractions in [0, 1]; got {self.sparsities}")
        unknown = [r for r in self.regimes if r not in REGIMES]
        if unknown or not self.regimes:
            raise ValueError(f"unknown regime {unknown[0] if unknown else None!r}{where}; allowed: {', '.join(REGIMES)}")
        if self.criterion not in CRITERIA or self.scope not in SCOPES:
            raise ValueError(f"criterion {self.criterion!r} / scope {self.scope!r}{where}: allowed criteria "
                             f"{', '.join(sorted(CRITERIA))}, scopes {', '.join(SCOPES)}")
        for task in self.finetune.tasks:
            get_task(task)
        if not self.finetune.lrs or not self.finetune.seeds:
            raise ValueError(f"[finetune] lrs and seeds{where} must not be empty")

    def data_dir(self, override: str | None = None) -> Path | None:
        """The data root: `override`, else ``[data] dir``, else ``$PRUNELAB_DATA``."""
        chosen = override or self.data.dir or os.environ.get("PRUNELAB_DATA")
        if not chosen:
            return None
        base = Path(self.source).parent if self.source and not Path(chosen).is_absolute() and not override else Path(".")
        return (base / os.path.expandvars(chosen)).resolve()


_SECTIONS = {"data": DataSpec, "pretrain": PretrainSpec, "finetune": FinetuneSpec, "resources": Resources}


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read a study TOML strictly: an unknown key or section is an error naming it and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study spec {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    sections = {}
    for name, cls in _SECTIONS.items():
        table = raw.pop(name, {})
        if not isinstance(table, dict):
            raise ValueError(f"[{name}] in {path} must be a table")
        sections[name] = from_dict(cls, table, f"[{name}] of {path}")
    for key in ("name", "model", "sparsities"):
        if key not in raw:
            raise ValueError(f"{path} lacks the required key {key!r}")
    return from_dict(StudySpec, {**raw, **sections, "source": str(path)}, str(path))


def spec_dict(spec: StudySpec) -> dict:
    return dataclasses.asdict(spec)
