"""Run a study: claim runs, start them in dependency order with an executor, record results and failures.

A study directory (``study_dir.py``) holds ``study.json`` and ``runs/<id>/`` per run:
    result.json      written atomically when the run finished: it is never redone
    error.json       the run failed, or was tried ``max_attempts`` times without a result (with its log's tail);
                     the study goes on (``retry_failed`` reruns it)
    claim-<n>.json   attempt n's claim, a lease renewed by its live runner (``claims.py``): two runners never run
                     the same run, and a dead runner's run (on any host) is taken over once its lease expires
    run.log          the output of each attempt (a subprocess's or Ray worker's stdout and stderr; the log records
                     and warnings of a run in this process)
    work/            the run's own directory (checkpoints, logs, the pre-trained model dependents read)
An interrupted run restarts from scratch in a clean ``work/``, so a study killed at any moment (even ``kill -9``)
and run again finishes with the same results as an uninterrupted one. One run's execution is in ``execute.py``;
where runs execute (this process, subprocesses, Ray) in ``executors.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import InputError
from ..io import pid_alive, read_json, remove_dead_temporaries, write_json
from . import claims
from .execute import execute_claimed  # noqa: F401 (a public entry point)
from .executors import EXECUTORS
from .plan import Run, expand
from .spec import StudySpec
from .study_dir import ERROR_FILE, RESULT_FILE, STUDY_FILE, init_study_dir, open_study, run_dir  # noqa: F401 (the study directory's API)


def status_of(root: Path, run: Run) -> str:
    """``done``, ``failed``, ``running`` (its latest attempt's lease is live) or ``pending``."""
    d = run_dir(root, run.id)
    if (d / RESULT_FILE).is_file():
        return "done"
    if (d / ERROR_FILE).is_file():
        return "failed"
    attempt, record = claims.latest(d)
    return "running" if attempt and claims.is_live(d, attempt, record) else "pending"


def clear_stale_claims(root: Path) -> None:
    """Delete what dead runners left in the run directories: half-written files, claims being written, and the
    claims of finished runs (a kill can come after a run's result, before its claim is released). The claims of
    unfinished runs stay: they count its attempts, and ``claims.take`` takes over an expired one."""
    for d in Path(root).glob("runs/*"):
        remove_dead_temporaries(d)
        for mine in d.glob(".claim.*"):  # claims.take's own file, linked then removed
            pid = mine.name.split(".")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                mine.unlink(missing_ok=True)
        if (d / RESULT_FILE).is_file() or (d / ERROR_FILE).is_file():
            attempt, record = claims.latest(d)
            if attempt and not claims.is_live(d, attempt, record):
                claims.release(d)


def give_up(root: Path, run: Run, attempts: int) -> None:
    """Record `run` failed after `attempts` attempts that ended without a result, with the tail of its log."""
    d = run_dir(root, run.id)
    tail = claims.log_tail(d)
    write_json(d / ERROR_FILE, {"id": run.id, "attempts": attempts,
                                "error": f"no result after {attempts} attempts (each one's process died or was killed, "
                                         f"e.g. out of memory); the tail of {d / 'run.log'}:\n{tail or '(empty)'}"})


def run_study(spec: StudySpec, root: str | os.PathLike, *, data_dir: Path | None = None, executor: str = "local",
              jobs: int = 1, retry_failed: bool = False, address: str | None = None, progress: bool = True,
              max_attempts: int = claims.MAX_ATTEMPTS, lease_seconds: float = claims.LEASE_SECONDS) -> dict:
    """Run every pending run of `spec` in `root` whose dependencies are done; return the status counts.

    A run is tried at most `max_attempts` times: an attempt whose process ends without a result (killed, out of
    memory) is retried, and then the run is recorded failed with the tail of its log. A claim's lease is
    `lease_seconds`: a runner that stops renewing it (on any host) loses the run to the next runner after that.
    """
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise InputError(f"--jobs {jobs} must be >= 1")
    if max_attempts < 1:
        raise InputError(f"--max-attempts {max_attempts} must be >= 1")
    root = init_study_dir(spec, root, data_dir or spec.data_dir())
    clear_stale_claims(root)
    runs = expand(spec)
    if retry_failed:
        for run in runs:
            d = run_dir(root, run.id)
            if (d / ERROR_FILE).is_file() and not claims.is_live(d, *claims.latest(d)):
                claims.release(d)  # its attempts count afresh
                (d / ERROR_FILE).unlink(missing_ok=True)
    bar = _progress(len(runs), progress, sum(status_of(root, r) == "done" for r in runs))
    launcher = EXECUTORS[executor](jobs=jobs, address=address, resources=spec.resources)
    started_at: dict[str, float] = {}
    durations: dict[str, list[float]] = {}  # seconds of the runs this process saw start and finish, by recipe
    try:
        while True:
            states = {r.id: status_of(root, r) for r in runs}
            for r in runs:
                attempts = claims.latest(run_dir(root, r.id))[0]
                if states[r.id] == "pending" and attempts >= max_attempts:
                    give_up(root, r, attempts)
                    states[r.id] = "failed"
                if r.id in started_at and states[r.id] in ("done", "failed"):
                    seconds = time.monotonic() - started_at.pop(r.id)
                    if states[r.id] == "done":
                        durations.setdefault(r.recipe, []).append(seconds)
            if bar is not None:
                bar.n = sum(s == "done" for s in states.values())
                bar.set_postfix_str(progress_note(runs, states, durations, jobs), refresh=False)
                bar.refresh()
            ready = [r for r in runs if states[r.id] == "pending" and all(states[d] == "done" for d in r.depends_on)]
            started = []
            for r in ready:
                if not launcher.has_room():
                    break
                attempt = claims.take(run_dir(root, r.id), lease_seconds)
                if attempt is not None:
                    started_at.setdefault(r.id, time.monotonic())
                    launcher.start(root, r, attempt)
                    started.append(r)
                    if launcher.synchronous:
                        break  # ran in this process: refresh the states (and the bar) before the next one
            if not started and not launcher.busy():
                if not any(states[r.id] == "running" for r in runs):
                    break  # nothing left that can make progress
                time.sleep(min(1.0, lease_seconds / 4))  # another runner is working, or its lease has yet to expire
            for run, attempt in launcher.poll(timeout=min(1.0, lease_seconds / 4)):
                d = run_dir(root, run.id)
                if not (d / RESULT_FILE).is_file() and not (d / ERROR_FILE).is_file():
                    claims.expire(d, attempt)  # its process ended without a result: this attempt is over
            for run, attempt in launcher.alive():  # until their processes hold their claims themselves, and after
                claims.renew(run_dir(root, run.id), attempt)
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
    failures = {r.id: read_json(run_dir(root, r.id) / ERROR_FILE, "error record")["error"] for r in runs if states[r.id] == "failed"}
    return {"study": spec.name, "total": len(runs), **counts, "failures": failures}


def _progress(total: int, enabled: bool, done: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # no rate-based ETA: runs of different recipes differ several-fold; progress_note gives one by recipe
    return tqdm(total=total, initial=done, desc="study runs", unit="run",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")


def progress_note(runs: list, states: dict[str, str], durations: dict[str, list[float]], jobs: int) -> str:
    """Done/total per recipe of run, and an ETA: each recipe's runs left times the mean time of its runs finished in
    this process, over `jobs`; none until every recipe with runs left has a finished one."""
    recipes = {}
    for r in runs:
        done, total = recipes.get(r.recipe, (0, 0))
        recipes[r.recipe] = (done + (states[r.id] == "done"), total + 1)
    counts = ", ".join(f"{recipe} {done}/{total}" for recipe, (done, total) in recipes.items())
    left = {recipe: total - done for recipe, (done, total) in recipes.items() if total > done}
    if not left:
        return counts
    if any(not durations.get(recipe) for recipe in left):
        return f"{counts}; ETA after a run of each recipe"
    seconds = sum(n * sum(durations[recipe]) / len(durations[recipe]) for recipe, n in left.items()) / max(1, jobs)
    return f"{counts}; ETA {f'{seconds:.0f} s' if seconds < 90 else f'{seconds / 60:.0f} min'} by recipe"
