"""Execute a study: claim runs, run them in dependency order with an executor, record results and failures.

A study directory holds ``study.json`` (the resolved spec) and ``runs/<id>/`` per run:
    result.json   written atomically when the run finished: it is never redone
    error.json    the run failed; the study goes on (``retry_failed`` reruns it)
    claim.json    created exclusively (O_EXCL) by whoever runs it, holding that process's pid: two runners
                  never run the same run; a claim whose process is gone (same host) is stale and retaken
    work/         the run's own directory (checkpoints, logs, the pre-trained model dependents read)
An interrupted run restarts from scratch in a clean ``work/``, so a study killed at any moment (even
``kill -9``) and run again finishes with the same results as an uninterrupted one. What each kind of run
does is in ``execute.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ..config import dumps, from_dict
from ..training.run import write_json
from . import execute
from .plan import Run, expand
from .spec import SECTIONS, Resources, StudySpec, spec_dict

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
EXECUTORS = ("local", "ray")


# -- the study directory ------------------------------------------------------------------------------


def init_study_dir(spec: StudySpec, root: str | os.PathLike, data_dir: Path | None) -> Path:
    """Create or reopen `root` for `spec`; a directory holding another spec is an error."""
    root = Path(root)
    record = {"spec": spec_dict(spec), "data_dir": str(data_dir) if data_dir else None}
    path = root / STUDY_FILE
    if path.is_file():
        existing, _ = open_study(root)  # read as today's spec: a section added since then takes its defaults
        if {**spec_dict(existing), "source": ""} != {**record["spec"], "source": ""}:
            raise ValueError(f"{root} holds study {existing.name!r} with a different spec; use another --out")
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"output directory {root} is not empty and holds no study; choose another --out")
    (root / "runs").mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return root


def open_study(root: str | os.PathLike) -> tuple[StudySpec, Path | None]:
    """The spec and data directory recorded in `root`; sections missing from an older study.json take defaults."""
    path = Path(root) / STUDY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a study directory (no {STUDY_FILE}); create it with prunelab study run SPEC --out DIR")
    record = json.loads(path.read_text())
    raw = dict(record["spec"])
    sections = {name: from_dict(cls, raw.pop(name, {}), f"[{name}] of {path}") for name, cls in SECTIONS.items()}
    return StudySpec(**raw, **sections), Path(record["data_dir"]) if record["data_dir"] else None


def run_dir(root: Path, run_id: str) -> Path:
    return Path(root) / "runs" / run_id


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
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim(root: Path, run_id: str) -> bool:
    """Take the run exclusively; retake a stale claim. False when someone else holds it."""
    d = run_dir(root, run_id)
    d.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(d / "claim.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            existing = _read_claim(d)
            if existing is not None and not _stale(existing):
                return False
            (d / "claim.json").unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        if (d / "result.json").is_file() or (d / "error.json").is_file():
            (d / "claim.json").unlink()  # finished by another runner since we last looked
            return False
        return True
    return False


def _hand_claim_to_me(d: Path) -> None:
    tmp = d / f".claim.{os.getpid()}"
    tmp.write_text(dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
    os.replace(tmp, d / "claim.json")


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
    _quiet()
    with open(d / "attempts.log", "a") as log:  # one line per execution: a record of who ran it, and when
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}\n")
    try:
        shutil.rmtree(d / "work", ignore_errors=True)  # an interrupted attempt restarts from scratch
        result = execute.KINDS[run.kind](spec, data_dir, root, run, d / "work")
        write_json(d / "result.json", {"id": run_id, "kind": run.kind, **run.params, **result})
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
        raise ValueError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise ValueError(f"--jobs {jobs} must be >= 1")
    root = init_study_dir(spec, root, data_dir or spec.data_dir())
    runs = expand(spec)
    if retry_failed:
        for run in runs:
            (run_dir(root, run.id) / "error.json").unlink(missing_ok=True)
    bar = _progress(len(runs), progress, sum(status_of(root, r) == "done" for r in runs))
    launcher = {"local": _LocalPool(jobs), "ray": _RayPool(address, spec.resources)}[executor]
    try:
        while True:
            states = {r.id: status_of(root, r) for r in runs}
            if bar is not None:
                bar.n = sum(s == "done" for s in states.values())
                bar.refresh()
            ready = [r for r in runs if states[r.id] == "pending" and all(states[d] == "done" for d in r.depends_on)]
            started = []
            for r in ready:
                if not launcher.has_room():
                    break
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
    failures = {r.id: json.loads((run_dir(root, r.id) / "error.json").read_text())["error"] for r in runs if states[r.id] == "failed"}
    return {"study": spec.name, "total": len(runs), **counts, "failures": failures}


def _progress(total: int, enabled: bool, done: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="study runs", unit="run")


class _LocalPool:
    """jobs == 1: runs in this process. jobs > 1: each run in its own ``prunelab`` subprocess."""

    def __init__(self, jobs: int):
        self.jobs, self.procs = jobs, []
        self.synchronous = jobs == 1

    def has_room(self) -> bool:
        return len(self.procs) < self.jobs

    def busy(self) -> bool:
        return bool(self.procs)

    def start(self, root: Path, run: Run) -> bool:
        if self.jobs == 1:
            execute_claimed(root, run.id)
        else:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "prunelab", "study", "exec-run", str(root), run.id],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return True

    def wait(self) -> None:
        while self.procs and all(p.poll() is None for p in self.procs):
            time.sleep(0.5)
        self.procs = [p for p in self.procs if p.poll() is None]

    def close(self) -> None:
        for p in self.procs:
            p.wait()


class _RayPool:
    """Each run is a Ray task with the spec's CPU/GPU needs; the driver collects results as they finish."""

    def __init__(self, address: str | None, resources: Resources):
        self.address, self.resources, self.pending, self.ray = address, resources, [], None
        self.synchronous = False

    def _ray(self):
        if self.ray is None:
            try:
                import ray
            except ImportError:
                raise ValueError("the ray executor needs Ray: pip install 'prunelab[ray]'") from None
            if not ray.is_initialized():
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self.ray = ray
            self.task = ray.remote(execute_claimed).options(num_cpus=self.resources.cpus, num_gpus=self.resources.gpus)
        return self.ray

    def has_room(self) -> bool:
        return True  # Ray queues tasks until resources free up

    def busy(self) -> bool:
        return bool(self.pending)

    def start(self, root: Path, run: Run) -> bool:
        self._ray()
        self.pending.append(self.task.remote(str(root), run.id))
        return True

    def wait(self) -> None:
        if self.pending:
            _, self.pending = self.ray.wait(self.pending, num_returns=1)

    def close(self) -> None:
        if self.ray is not None and self.pending:
            self.ray.get(self.pending)
