"""Where a study's runs execute: this process, one subprocess per run (``--jobs N``), or Ray tasks (``--executor ray``).

An executor has ``has_room()``, ``start(root, run, attempt)`` (the attempt is claimed already), ``busy()``,
``poll(timeout)`` (the ``(run, attempt)`` pairs whose process has ended since, waiting up to `timeout` seconds for
one), ``alive()`` (those still running, whose claims the driver renews) and ``close()``; ``synchronous`` executors
run ``start``'s run before returning. Whether a run that ended left a result is the driver's question, not theirs:
an executor never retries (Ray's own retries are off).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ..errors import InputError
from ..logs import SayOnce
from .execute import execute_claimed, execute_logged, logged_in_process
from .plan import Run
from .spec import Resources
from .study_dir import LOG_FILE, run_dir

# The command a subprocess runs one attempt with (``prunelab study exec-run ROOT RUN_ID --attempt N`` follows).
CHILD_COMMAND = [sys.executable, "-m", "prunelab", "study", "exec-run"]
# Ray: a task is never run again by Ray itself (a worker's death, an exception); the driver decides.
RAY_TASK_OPTIONS = {"max_retries": 0, "retry_exceptions": False}


class LocalExecutor:
    """jobs == 1: runs in this process. jobs > 1: each run in its own ``prunelab`` subprocess, its output appended
    to the run's ``run.log``."""

    def __init__(self, *, jobs: int = 1, **_):
        self.jobs, self.procs = jobs, []
        self.synchronous = jobs == 1
        self.console = SayOnce("details in each run's run.log")  # a warning of every run, said once
        self.ended: list[tuple[Run, int]] = []

    def has_room(self) -> bool:
        return len(self.procs) < self.jobs

    def busy(self) -> bool:
        return bool(self.procs)

    def start(self, root: Path, run: Run, attempt: int) -> None:
        d = run_dir(root, run.id)
        if self.jobs == 1:
            with logged_in_process(d, self.console):
                execute_claimed(root, run.id, attempt)
            self.ended.append((run, attempt))
            return
        with open(d / LOG_FILE, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} attempt {attempt} in a subprocess\n".encode())
            log.flush()
            proc = subprocess.Popen([*CHILD_COMMAND, str(root), run.id, "--attempt", str(attempt)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((proc, run, attempt))

    def poll(self, timeout: float) -> list[tuple[Run, int]]:
        deadline = time.monotonic() + timeout
        while self.procs and all(p.poll() is None for p, _, _ in self.procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        ended = self.ended + [(run, attempt) for p, run, attempt in self.procs if p.poll() is not None]
        self.procs = [entry for entry in self.procs if entry[0].poll() is None]
        self.ended = []
        return ended

    def alive(self) -> list[tuple[Run, int]]:
        return [(run, attempt) for p, run, attempt in self.procs if p.poll() is None]

    def close(self) -> None:
        for p, _, _ in self.procs:
            p.wait()


class RayExecutor:
    """Each run is a Ray task with the spec's CPU/GPU needs; the driver collects them as they end."""

    def __init__(self, *, address: str | None = None, resources: Resources | None = None, **_):
        self.address, self.resources, self.pending, self.ray = address, resources, {}, None
        self.synchronous = False

    def _ray(self):
        if self.ray is None:
            try:
                import ray
            except ImportError:
                raise InputError("the ray executor needs Ray: pip install 'prunelab[ray]'") from None
            if not ray.is_initialized():
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self.ray = ray
            resources = self.resources or Resources()
            self.task = ray.remote(execute_logged).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                                           **RAY_TASK_OPTIONS)
        return self.ray

    def has_room(self) -> bool:
        return True  # Ray queues tasks until resources free up

    def busy(self) -> bool:
        return bool(self.pending)

    def start(self, root: Path, run: Run, attempt: int) -> None:
        self._ray()
        self.pending[self.task.remote(str(root), run.id, attempt)] = (run, attempt)

    def poll(self, timeout: float) -> list[tuple[Run, int]]:
        if not self.pending:
            return []
        ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        ended = []
        for ref in ready:
            try:
                self.ray.get(ref)
            except Exception:  # the worker died (or Ray failed it): the driver sees no result and counts the attempt
                pass
            ended.append(self.pending.pop(ref))
        return ended

    def alive(self) -> list[tuple[Run, int]]:
        return list(self.pending.values())

    def close(self) -> None:
        if self.ray is not None and self.pending:
            self.ray.wait(list(self.pending), num_returns=len(self.pending))


# --executor NAME -> its class
EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}
