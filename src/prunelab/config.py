"""Typed, strictly loaded configuration of a pruning run, and the versions saved beside it."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .schedules import SCHEDULES
from .scores import CRITERIA, DURING_TRAINING
from .select import SCOPES, parse_structure
from .targets import parse_kinds
from .errors import InputError

MODES = ("enforced", "free")
# Every criterion a PruningConfig names: the score functions (``scores.CRITERIA``) and SparseGPT, which chooses
# masks while it updates the weights (``methods.sparsegpt``). The calibrated ones prune one-shot over calibration
# data (``prunelab prune``); the training ones accumulate their scores while the model trains.
CRITERION_NAMES = (*CRITERIA, "sparsegpt", "soft-movement")
CALIBRATED = ("wanda", "sparsegpt")
TRAINING_ONLY = (*DURING_TRAINING, "soft-movement")  # soft movement learns its masks (methods.learned_masks)
# The criteria each command takes (its pipeline checks them; a study's ``criteria`` axis runs each regime with those
# its command takes).
COMMAND_CRITERIA = {
    "prunelab prune": ("magnitude", "random", "wanda", "sparsegpt"),
    "prunelab pretrain": ("magnitude", "random", "movement", "soft-movement"),
    "prunelab finetune": ("magnitude", "random", "movement", "soft-movement"),
    "prunelab distill-prune": ("magnitude", "random", "movement", "soft-movement"),
}
T = TypeVar("T")


def one_shot_scope(criterion: str, structure: str | None = None) -> str:
    """The scope a one-shot prune uses when none is given: Wanda compares within each output row (its paper's
    group), every other criterion, and any N:M structure, within each matrix."""
    return "row" if criterion == "wanda" and not structure else "matrix"


@dataclass
class PruningConfig:
    """What to prune, by which criterion, on which schedule, and how masks are enforced.

    Attributes:
        sparsity: Final fraction of zeros in [0, 1], per target (``scope='matrix'``) or overall.
        criterion: ``magnitude``, ``random``, ``movement`` (while training), ``wanda`` or ``sparsegpt`` (one-shot
            over calibration data); see ``CRITERION_NAMES``.
        scope: ``matrix`` (a threshold per target, the paper's default), ``global`` (one threshold), or ``row``
            (one per output row: Wanda's group; one-shot only).
        schedule: ``oneshot``, ``cubic`` or ``constant`` (see ``schedules``).
        initial_sparsity: s_i of the cubic schedule.
        start_step, end_step: t0 and t1 of the schedule (optimizer steps); ``oneshot`` prunes at t0.
        update_every: Δt, steps between mask updates of the cubic schedule.
        mode: ``enforced`` (pruned weights stay 0.0 through every step: the paper's *pruning*) or
            ``free`` (zeroed at each mask update, then free to regrow: *information deletion*).
        regrow: If False (default) masks are monotone: once pruned, stays pruned. If True every update
            re-selects from all weights. Movement always re-selects: its masks are the top-k of its scores at every
            update (the straight-through top-k estimator), and a weight it brings back has its value back.
        seed: Seed of stochastic criteria.
        include, exclude: Kinds to keep / drop (see ``targets.KINDS``); ``include=None`` keeps all.
        layers: Layer indices to prune; ``None`` prunes all layers.
        structure: ``"N:M"`` (e.g. ``"2:4"``): exactly N kept in every group of M consecutive weights along each
            target's input dimension; then `sparsity` is 1 - N/M and the scope ``matrix``. The cubic schedule
            prunes whole weights per group as it goes (4:4, 3:4, 2:4 for 2:4), each step exact. ``None``:
            unstructured.
    """

    sparsity: float = 0.5
    criterion: str = "magnitude"
    scope: str = "matrix"
    schedule: str = "oneshot"
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int = 10_000
    update_every: int = 10
    mode: str = "enforced"
    regrow: bool = False
    seed: int = 0
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    layers: list[int] | None = None
    structure: str | None = None

    def __post_init__(self) -> None:
        for name in ("sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InputError(f"{name} {value!r} is outside [0, 1]; pass the fraction of zeros, e.g. 0.5")
        _check_choice("criterion", self.criterion, CRITERION_NAMES)
        _check_choice("scope", self.scope, SCOPES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("mode", self.mode, MODES)
        if self.scope == "row" and self.schedule != "oneshot":
            raise InputError(f"scope row is for one-shot pruning (a row's count does not grow monotonically along a "
                             f"schedule); use scope matrix with the {self.schedule} schedule")
        if self.criterion == "sparsegpt" and self.scope != "matrix":
            raise InputError(f"sparsegpt chooses each matrix's mask block by block as it reconstructs; scope "
                             f"{self.scope} does not apply: drop --scope (matrix)")
        if self.criterion == "wanda" and self.scope == "global":
            raise InputError("wanda prunes layer by layer, each from the inputs the already-pruned layers before it give, "
                             "so no threshold spans all targets; scope global does not apply: use row (its paper's "
                             "group, the default) or matrix")
        if self.start_step < 0:
            raise InputError(f"start_step {self.start_step} is negative; steps count from 0")
        if self.update_every < 1:
            raise InputError(f"update_every {self.update_every} must be >= 1")
        if self.schedule == "cubic":
            if self.end_step <= self.start_step:
                raise InputError(
                    f"end_step {self.end_step} must be greater than start_step {self.start_step} for the cubic schedule"
                )
            if self.initial_sparsity > self.sparsity and not self.regrow:
                raise InputError(
                    f"initial_sparsity {self.initial_sparsity} exceeds sparsity {self.sparsity}; masks are "
                    "monotone, so the schedule must not decrease (or set regrow=True)"
                )
        if self.structure is not None:
            n, m = parse_structure(self.structure)
            if abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise InputError(f"structure {self.structure} keeps {n} of every {m} weights: sparsity {1 - n / m:g}, "
                                 f"not {self.sparsity:g}; drop the sparsity or set it to {1 - n / m:g}")
            if self.scope != "matrix":
                raise InputError(f"structure {self.structure} is exact in every group of {m}: it needs matrix scope, "
                                 f"not {self.scope}")
        self.exclude = sorted(parse_kinds(self.exclude, "exclude"))
        if self.include is not None:
            self.include = sorted(parse_kinds(self.include, "include"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "PruningConfig":
        return from_dict(cls, data, source)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config", section: str | None = None,
              ranges: bool = True) -> T:
    """Build dataclass `cls` from `data` (the table `section` of the file `source`, if given) strictly.

    An unknown key, a value of the wrong type, or one outside the range in ``cls.RANGES`` (``{key: (low, high)}``,
    either ``None``; ``cls.OPEN`` lists keys whose low end is excluded, ``cls.NONEMPTY`` lists that must not be
    empty) is a ``ValueError`` naming the key, the section and the file. Keys in ``cls.CHECKED`` are left to the
    class's own ``__post_init__``. ``ranges=False`` checks types only (a record an older prunelab wrote).
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"[{section}] of {source}" if section else source
        raise InputError(f"unknown key {unknown[0]!r} in {where}; allowed: {', '.join(sorted(known))}")
    for key, value in data.items():
        if dataclasses.is_dataclass(value) or key in getattr(cls, "CHECKED", ()):
            continue
        name = f"[{section}] {key} in {source}" if section else f"{key} in {source}"
        if not _matches(value, hints[key]):
            raise InputError(f"{name} must be {_describe(hints[key])} (got {value!r})")
        if ranges:
            _check_range(cls, key, value, name)
    return cls(**data)


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` (as read from TOML or JSON) has the type `hint` says: int, float, str, bool, lists, optionals."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:  # an int is a float; a bool is not a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return "a list of " + {int: "whole numbers", float: "finite numbers", str: "strings"}.get(args[0], _describe(args[0]))
    return {int: "a whole number", float: "a finite number", str: "a string", bool: "true or false",
            type(None): "absent (null)"}.get(hint, getattr(hint, "__name__", str(hint)))


def _check_range(cls: type, key: str, value: Any, name: str) -> None:
    values = value if isinstance(value, list) else [value]
    if key in getattr(cls, "NONEMPTY", ()) and not values:
        raise InputError(f"{name} must not be empty")
    low, high = getattr(cls, "RANGES", {}).get(key, (None, None))
    open_low = key in getattr(cls, "OPEN", ())
    for v in values:
        if v is None or isinstance(v, (str, bool)):
            continue
        if (low is not None and (v <= low if open_low else v < low)) or (high is not None and v > high):
            bounds = " and ".join(b for b in ((f"{'>' if open_low else '>='} {low:g}" if low is not None else ""),
                                               (f"<= {high:g}" if high is not None else "")) if b)
            raise InputError(f"{name}: {'each value ' if isinstance(value, list) else ''}must be {bounds} (got {value!r})")


def check_number(flag: str, value, *, low: float | None = None, high: float | None = None, integer: bool = False,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming `flag` unless `value` is a finite number (an int if `integer`) in the range."""
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = [f"{'>' if low_open else '>='} {low:g}"] if low is not None else []
        bounds += [f"{'<' if high_open else '<='} {high:g}"] if high is not None else []
        raise InputError(f"{flag} {value!r} must be {'a whole number' if integer else 'a number'}"
                         + (f" {' and '.join(bounds)}" if bounds else ""))


def check_criterion(criterion: str, where: str) -> None:
    """Raise ``InputError`` unless `criterion` is one `where` (a command of ``COMMAND_CRITERIA``) takes, saying
    which can and why."""
    allowed = COMMAND_CRITERIA[where]
    if criterion in allowed:
        return
    why = ("it prunes one-shot over calibration data: use prunelab prune --criterion "
           f"{criterion} --calibration TASK" if criterion in CALIBRATED else
           "it learns its masks while the model trains: use pretrain, finetune --prune-after-epochs or distill-prune"
           if criterion == "soft-movement" else
           "it accumulates its scores while the model trains: use finetune, distill-prune or pretrain"
           if criterion in TRAINING_ONLY else "")
    raise InputError(f"--criterion {criterion} does not apply to {where}" + (f" ({why})" if why else "")
                     + f"; allowed there: {', '.join(allowed)}")


def label(value: float, spec: str = ".2f") -> str:
    """`value` as a name's part (a run id, a directory): in format `spec`, or, where that format would give two
    different numbers one name (0.12 and 0.125 as ``0.12``), in every digit Python needs to read it back."""
    text = format(value, spec)
    return text if float(text) == value else repr(float(value))


def versions() -> dict[str, str]:
    """Versions of prunelab, torch and transformers, saved with every result."""
    import torch
    import transformers

    from . import __version__

    return {"prunelab": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
