"""Execute one claimed run of a study, in whichever process the executor chose: write result.json or error.json.

The process that executes a run holds its claim (``claims.hand_over``) and renews it while the run lasts
(``claims.Heartbeat``). An interrupted run restarts from scratch in a clean ``work/``. What each recipe does is in
``recipes.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from ..io import reached, write_json
from ..logs import SayOnce, to_file
from . import claims
from .plan import expand
from .recipes import RECIPES
from .study_dir import ERROR_FILE, LOG_FILE, RESULT_FILE, open_study, run_dir

def execute_claimed(root: str | os.PathLike, run_id: str, attempt: int | None = None) -> str:
    """Run `run_id` of the study in `root` as its attempt `attempt` (already claimed; default: the latest); write
    result.json or error.json; release the claim.

    Returns the final status: ``done``, ``failed``, or ``superseded`` (a later attempt took over while this one
    stalled past its lease: its outcome is dropped).
    """
    root = Path(root)
    spec, data_dir = open_study(root)
    run = {r.id: r for r in expand(spec)}[run_id]
    d = run_dir(root, run_id)
    attempt = attempt or claims.latest(d)[0]
    lease = claims.hand_over(d, attempt)
    reached("claim taken")
    _quiet()
    with open(d / "attempts.log", "a") as log:  # one line per execution: a record of who ran it, and when
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} attempt {attempt}: pid {os.getpid()} on {socket.gethostname()}\n")
    reached("attempt logged")
    with claims.Heartbeat(d, attempt, lease):
        try:
            shutil.rmtree(d / "work", ignore_errors=True)  # an interrupted attempt restarts from scratch
            reached("work cleared")
            result = RECIPES[run.recipe].run(spec, data_dir, root, run, d / "work")
            reached("run finished")
            if claims.superseded(d, attempt):
                return "superseded"
            write_json(d / RESULT_FILE, {"id": run_id, "recipe": run.recipe, **run.params, **result})
            reached("result written")
            status = "done"
        except Exception as err:  # a failed run is recorded and the study goes on
            if claims.superseded(d, attempt):
                return "superseded"
            write_json(d / ERROR_FILE, {"id": run_id, "error": f"{type(err).__name__}: {err}",
                                        "traceback": traceback.format_exc()})
            status = "failed"
    claims.release(d)
    return status


def execute_logged(root: str, run_id: str, attempt: int) -> str:
    """``execute_claimed`` with this process's standard output and error appended to the run's ``run.log`` (a Ray
    worker's, whose output would otherwise go to the cluster's logs)."""
    d = run_dir(Path(root), run_id)
    with _output_to(d / LOG_FILE, f"attempt {attempt} on {socket.gethostname()}, pid {os.getpid()}"):
        return execute_claimed(root, run_id, attempt)


@contextmanager
def _output_to(path: Path, header: str):
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {header}\n".encode())
        log.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def logged_in_process(d: Path, console: SayOnce | None = None):
    """A run executed in the driver's own process: its log records and warnings go to its ``run.log``, not between
    the study's progress bars; `console` says each warning once."""
    return to_file(d / LOG_FILE, console)


def _quiet() -> None:
    """Runs inside a study report through the study's progress bar and their files, not the console."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
