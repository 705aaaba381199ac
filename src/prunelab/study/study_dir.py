"""A study directory: ``study.json`` (the resolved spec, its data directory and the versions that ran it) and
``runs/<id>/`` per run. Opening one checks that it holds the same spec, data and versions as this run."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import from_dict, versions
from ..errors import InputError, MissingInputError, OutputExistsError
from ..io import check_apart, mark_output, read_json, write_json
from .spec import SECTIONS, StudySpec, spec_dict

STUDY_FILE = "study.json"
# In runs/<id>/: the finished run's record, a failed run's record, and the output of its attempts.
RESULT_FILE, ERROR_FILE, LOG_FILE = "result.json", "error.json", "run.log"


def init_study_dir(spec: StudySpec, root: str | os.PathLike, data_dir: Path | None) -> Path:
    """Create or reopen `root` for `spec`; a directory holding another spec, or the same spec on other data, is an
    error. ``study.json`` is written before ``runs/``, so a study killed in between reopens."""
    root = Path(root)
    from ..artifact import resolve_model_path

    check_apart(root, [data_dir, resolve_model_path(spec.model), spec.source])
    record = {"spec": spec_dict(spec), "data_dir": str(data_dir) if data_dir else None, "versions": versions()}
    path = root / STUDY_FILE
    if path.is_file():
        existing, recorded_data = open_study(root)  # read as today's spec: a section added since then takes its defaults
        if {**spec_dict(existing), "source": ""} != {**record["spec"], "source": ""}:
            raise InputError(f"{root} holds study {existing.name!r} with a different spec; use another --out")
        if recorded_data != data_dir:
            how = f"pass --data {recorded_data}" if recorded_data else "unset PRUNELAB_DATA and pass no --data"
            raise InputError(f"{root} holds study {existing.name!r} run on data {recorded_data or 'from the hub'}, not "
                             f"{data_dir or 'from the hub'}; {how} to resume it, or use another --out")
        made_with = read_json(path, "study record").get("versions")  # absent in a study.json of an older prunelab
        if made_with is not None and made_with != record["versions"]:  # its table would mix runs computed differently
            raise InputError(f"{root} holds study {existing.name!r} run with {_listed(made_with)}, not {_listed(record['versions'])}; "
                             "resume it with those versions, or use another --out")
        (root / "runs").mkdir(exist_ok=True)
        return root
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"output {root} exists and is not a directory; choose another --out")
    if root.exists() and any(p.name != "runs" or any(p.iterdir()) for p in root.iterdir()):
        raise OutputExistsError(f"output directory {root} is not empty and holds no study; choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    mark_output(root)
    write_json(path, record)
    (root / "runs").mkdir(exist_ok=True)
    return root


def _listed(versions: dict) -> str:
    return ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))


def open_study(root: str | os.PathLike) -> tuple[StudySpec, Path | None]:
    """The spec and data directory recorded in `root`; sections missing from an older study.json take defaults."""
    path = Path(root) / STUDY_FILE
    if not path.is_file():
        raise MissingInputError(f"{root} is not a study directory (no {STUDY_FILE}); create it with prunelab study run SPEC --out DIR")
    record = read_json(path, "study record")
    raw = dict(record["spec"])
    # ranges as an older prunelab allowed them (e.g. [pretrain] prune_end = 0 for "all steps"): only new specs are strict
    sections = {name: from_dict(cls, raw.pop(name, {}), str(path), section=name, ranges=False) for name, cls in SECTIONS.items()}
    return StudySpec(**raw, **sections), Path(record["data_dir"]) if record["data_dir"] else None


def run_dir(root: Path, run_id: str) -> Path:
    """``<root>/runs/<run_id>``, checked to stay inside ``runs/`` whatever the id holds."""
    runs = Path(root) / "runs"
    if (runs / run_id).resolve().parent != runs.resolve():
        raise InputError(f"run id {run_id!r} does not name a directory inside {runs}; the study spec is malformed")
    return runs / run_id
