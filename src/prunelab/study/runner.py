"""Execute a study: claim runs, run them in dependency order with an executor, record results and failures.

A study directory holds ``study.json`` (the resolved spec) and ``runs/<id>/`` per run:
    result.json   written atomically when the run finished: it is never redone
    error.json    the run failed; the study goes on (``retry_failed`` reruns it)
    claim.json    created exclusively (O_EXCL) by whoever runs it, holding that process's pid: two runners
                  never run the same run; a claim whose process is gone (same host) is stale and retaken
    work/         the run's own directory (checkpoints, logs, the pre-trained model dependents read)
An interrupted run restarts from scratch in a clean ``work/``, so a study killed at any moment (even
``kill -9``) and run again finishes with the same results as an uninterrupted one. What each kind of run
does is in ``run_kinds.py``; where runs execute (this process, subprocesses, Ray) in ``executors.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

from ..config import from_dict, versions
from ..io import dumps, pid_alive, read_json, remove_dead_temporaries, step, write_json, write_text
from .executors import EXECUTORS
from .plan import Run, expand
from .run_kinds import RUN_KINDS
from .spec import SECTIONS, StudySpec, spec_dict
from ..errors import InputError, MissingInputError, OutputExistsError

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"


# -- the study directory ------------------------------------------------------------------------------


def init_study_dir(spec: StudySpec, root: str | os.PathLike, data_dir: Path | None) -> Path:
    """Create or reopen `root` for `spec`; a directory holding another spec, or the same spec on other data, is an
    error. ``study.json`` is written before ``runs/``, so a study killed in between reopens."""
    root = Path(root)
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


def status_of(root: Path, run: Run) -> str:
    """``done``, ``failed``, ``running`` (claimed by a live process) or ``pending``."""
    d = run_dir(root, run.id)
    if (d / "result.json").is_file():
        return "done"
    if (d / "error.json").is_file():
        return "failed"
    claim = _read_claim(d)
    if claim is not None and not _stale(claim):
        return "running"
    return "pending"


# -- claims -------------------------------------------------------------------------------------------


def _read_claim(d: Path) -> dict | None:
    try:
        return json.loads((d / "claim.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _stale(claim: dict) -> bool:
    if claim.get("host") != socket.gethostname():
        return False  # another machine's process: cannot tell, assume alive
    return not pid_alive(int(claim["pid"]))


def claim(root: Path, run_id: str) -> bool:
    """Take the run exclusively; retake a stale claim. False when someone else holds it."""
    d = run_dir(root, run_id)
    d.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        mine = d / f".claim.{os.getpid()}"
        mine.write_text(_claim_record())
        try:  # a hard link appears whole and fails if the claim exists: no reader ever sees it empty
            _link_or_create(mine, d / "claim.json")
        except FileExistsError:
            existing = _read_claim(d)
            if existing is not None and not _stale(existing):
                return False
            (d / "claim.json").unlink(missing_ok=True)
            continue
        finally:
            mine.unlink(missing_ok=True)
        if (d / "result.json").is_file() or (d / "error.json").is_file():
            (d / "claim.json").unlink()  # finished by another runner since we last looked
            return False
        return True
    return False


def _link_or_create(source: Path, claim_file: Path) -> None:
    """``os.link``; where the file system has no hard links, an exclusive create filled at once instead."""
    try:
        os.link(source, claim_file)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(claim_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as f:
            f.write(source.read_text())


def clear_stale_claims(root: Path) -> None:
    """Delete what dead runners left in the run directories: half-written files, and the claims on finished runs
    (a kill can come after a run's result, before its claim is released). Claims on unfinished runs are left to
    ``claim``, which retakes them exclusively."""
    for d in Path(root).glob("runs/*"):
        remove_dead_temporaries(d)
        for mine in d.glob(".claim.*"):  # claim()'s own file, linked then removed
            pid = mine.name.rpartition(".")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                mine.unlink(missing_ok=True)
        finished = (d / "result.json").is_file() or (d / "error.json").is_file()
        existing = _read_claim(d)
        if finished and existing is not None and _stale(existing):
            (d / "claim.json").unlink(missing_ok=True)


def _claim_record() -> str:
    return dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})


def _hand_claim_to_me(d: Path) -> None:
    write_text(d / "claim.json", _claim_record())


# -- executing one run --------------------------------------------------------------------------------


def execute_claimed(root: str | os.PathLike, run_id: str) -> str:
    """Run `run_id` of the study in `root` (already claimed); write result.json or error.json; release.

    Returns the final status. Called in-process, in a subprocess, or in a Ray worker.
    """
    root = Path(root)
    spec, data_dir = open_study(root)
    run = {r.id: r for r in expand(spec)}[run_id]
    d = run_dir(root, run_id)
    _hand_claim_to_me(d)
    step("claim taken")
    _quiet()
    with open(d / "attempts.log", "a") as log:  # one line per execution: a record of who ran it, and when
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}\n")
    step("attempt logged")
    try:
        shutil.rmtree(d / "work", ignore_errors=True)  # an interrupted attempt restarts from scratch
        step("work cleared")
        result = RUN_KINDS[run.kind].run(spec, data_dir, root, run, d / "work")
        step("run finished")
        write_json(d / "result.json", {"id": run_id, "kind": run.kind, **run.params, **result})
        step("result written")
        return "done"
    except Exception as err:  # a failed run is recorded and the study goes on
        write_json(d / "error.json", {"id": run_id, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        return "failed"
    finally:
        (d / "claim.json").unlink(missing_ok=True)


def _quiet() -> None:
    """Runs inside a study report through the study's progress bar and their files, not the console."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# -- the driver ---------------------------------------------------------------------------------------


def run_study(spec: StudySpec, root: str | os.PathLike, *, data_dir: Path | None = None, executor: str = "local",
              jobs: int = 1, retry_failed: bool = False, address: str | None = None, progress: bool = True) -> dict:
    """Run every pending run of `spec` in `root` whose dependencies are done; return the status counts."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise InputError(f"--jobs {jobs} must be >= 1")
    root = init_study_dir(spec, root, data_dir or spec.data_dir())
    clear_stale_claims(root)
    runs = expand(spec)
    if retry_failed:
        for run in runs:
            (run_dir(root, run.id) / "error.json").unlink(missing_ok=True)
    bar = _progress(len(runs), progress, sum(status_of(root, r) == "done" for r in runs))
    launcher = EXECUTORS[executor](jobs=jobs, address=address, resources=spec.resources)
    started_at: dict[str, float] = {}
    durations: dict[str, list[float]] = {}  # seconds of the runs this process saw start and finish, by kind
    try:
        while True:
            states = {r.id: status_of(root, r) for r in runs}
            for r in runs:
                if r.id in started_at and states[r.id] == "done":
                    durations.setdefault(r.kind, []).append(time.monotonic() - started_at.pop(r.id))
            if bar is not None:
                bar.n = sum(s == "done" for s in states.values())
                bar.set_postfix_str(progress_note(runs, states, durations, jobs), refresh=False)
                bar.refresh()
            ready = [r for r in runs if states[r.id] == "pending" and all(states[d] == "done" for d in r.depends_on)]
            started = []
            for r in ready:
                if not launcher.has_room():
                    break
                started_at[r.id] = time.monotonic()
                if claim(root, r.id) and launcher.start(root, r):
                    started.append(r)
                    if launcher.synchronous:
                        break  # ran in this process: refresh the states (and the bar) before the next one
            if not started and not launcher.busy():
                if not any(states[r.id] == "running" for r in runs):
                    break  # nothing left that can make progress
                time.sleep(1.0)  # another runner is working; wait for it
            launcher.wait()
    finally:
        launcher.close()
        if bar is not None:
            bar.close()
    return study_status(root)


def study_status(root: str | os.PathLike) -> dict:
    """Counts of done/failed/running/pending/blocked runs, and the failures with their errors."""
    root = Path(root)
    spec, _ = open_study(root)
    runs = expand(spec)
    states = {r.id: status_of(root, r) for r in runs}
    for r in runs:  # a pending run whose dependency failed cannot run
        if states[r.id] == "pending" and any(states[d] in ("failed", "blocked") for d in r.depends_on):
            states[r.id] = "blocked"
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "failed", "running", "pending", "blocked")}
    failures = {r.id: read_json(run_dir(root, r.id) / "error.json", "error record")["error"] for r in runs if states[r.id] == "failed"}
    return {"study": spec.name, "total": len(runs), **counts, "failures": failures}


def _progress(total: int, enabled: bool, done: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # no rate-based ETA: runs of different kinds differ several-fold; progress_note gives one by kind
    return tqdm(total=total, initial=done, desc="study runs", unit="run",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")


def progress_note(runs: list, states: dict[str, str], durations: dict[str, list[float]], jobs: int) -> str:
    """Done/total per kind of run, and an ETA: each kind's runs left times the mean time of its runs finished in
    this process, over `jobs`; none until every kind with runs left has a finished one."""
    kinds = {}
    for r in runs:
        done, total = kinds.get(r.kind, (0, 0))
        kinds[r.kind] = (done + (states[r.id] == "done"), total + 1)
    counts = ", ".join(f"{kind} {done}/{total}" for kind, (done, total) in kinds.items())
    left = {kind: total - done for kind, (done, total) in kinds.items() if total > done}
    if not left:
        return counts
    if any(not durations.get(kind) for kind in left):
        return f"{counts}; ETA after a run of each kind"
    seconds = sum(n * sum(durations[kind]) / len(durations[kind]) for kind, n in left.items()) / max(1, jobs)
    return f"{counts}; ETA {f'{seconds:.0f} s' if seconds < 90 else f'{seconds / 60:.0f} min'} by kind"
