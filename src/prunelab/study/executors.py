"""Where a study's runs execute: this process, one subprocess per run (``--jobs N``), or Ray tasks (``--executor ray``).

An executor has ``has_room()``, ``start(root, run)`` (the run is claimed already), ``busy()``, ``wait()`` (until a
run finishes) and ``close()``; ``synchronous`` executors run ``start``'s run before returning.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .plan import Run
from .spec import Resources
from ..errors import InputError


class LocalExecutor:
    """jobs == 1: runs in this process. jobs > 1: each run in its own ``prunelab`` subprocess."""

    def __init__(self, *, jobs: int = 1, **_):
        self.jobs, self.procs = jobs, []
        self.synchronous = jobs == 1

    def has_room(self) -> bool:
        return len(self.procs) < self.jobs

    def busy(self) -> bool:
        return bool(self.procs)

    def start(self, root: Path, run: Run) -> bool:
        if self.jobs == 1:
            from .runner import execute_claimed

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


class RayExecutor:
    """Each run is a Ray task with the spec's CPU/GPU needs; the driver collects results as they finish."""

    def __init__(self, *, address: str | None = None, resources: Resources | None = None, **_):
        self.address, self.resources, self.pending, self.ray = address, resources, [], None
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
            from .runner import execute_claimed

            resources = self.resources or Resources()
            self.task = ray.remote(execute_claimed).options(num_cpus=resources.cpus, num_gpus=resources.gpus)
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


# --executor NAME -> its class
EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}
