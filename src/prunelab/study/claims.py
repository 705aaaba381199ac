"""Claims on a study's runs: who runs a run now, for how long that holds, and how often the run was tried.

Attempt `n` of a run is the file ``runs/<id>/claim-<n>.json``, created exclusively (a hard link appears whole, and
fails if the file exists), holding its holder's pid, host and lease in seconds. The claim is a lease:
    * its holder renews it by touching the file (``renew``) well within the lease, from a thread of the process
      that runs the run (``Heartbeat``) and from the driver that launched that process;
    * it is expired when its file was last touched more than a lease ago, on whichever host the holder runs, or at
      once when the holder is a process of this host that is gone, or when the driver saw its child end (``expire``);
    * taking over an expired attempt `n` is creating attempt `n + 1`: of two runners that find the same expired
      claim, one creates the file and the other finds it taken.
A run whose latest attempt expired without a result, after `max_attempts` attempts, is not tried again: the driver
records it failed with the tail of its log (``run.log``, where each attempt's output goes).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

from ..io import dumps, pid_alive, write_text
from .study_dir import LOG_FILE

LEASE_SECONDS = 120.0  # a holder renews every quarter lease; a dead one's run is taken over a lease after it died
MAX_ATTEMPTS = 2
_CLAIM = re.compile(r"claim-(\d+)\.json")


def claim_file(d: Path, attempt: int) -> Path:
    return Path(d) / f"claim-{attempt}.json"


def latest(d: Path) -> tuple[int, dict | None]:
    """The latest attempt's number (0: never claimed) and its claim (``None`` if unreadable)."""
    attempts = [int(m.group(1)) for p in Path(d).glob("claim-*.json") if (m := _CLAIM.fullmatch(p.name))]
    if not attempts:
        return 0, None
    n = max(attempts)
    try:
        return n, json.loads(claim_file(d, n).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # removed meanwhile, or a half-written takeover record
        return n, None


def is_live(d: Path, attempt: int, record: dict | None) -> bool:
    """Whether attempt `attempt`'s holder still holds it: renewed within its lease, and not a gone local process."""
    try:
        age = time.time() - claim_file(d, attempt).stat().st_mtime
    except FileNotFoundError:
        return False
    if record is None:
        return age < LEASE_SECONDS  # being written: give it a lease
    if age > float(record.get("lease", LEASE_SECONDS)):
        return False
    return record.get("host") != socket.gethostname() or pid_alive(int(record["pid"]))


def _record(attempt: int, lease: float) -> str:
    return dumps({"attempt": attempt, "pid": os.getpid(), "host": socket.gethostname(), "lease": lease, "since": time.time()})


def take(d: Path, lease: float = LEASE_SECONDS) -> int | None:
    """Claim the run in `d` for this process as a new attempt, unless its latest attempt is live; the attempt's
    number, or ``None`` when another runner holds it (or has just taken it)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    n, record = latest(d)
    if n and is_live(d, n, record):
        return None
    mine = d / f".claim.{os.getpid()}.{threading.get_ident()}"
    mine.write_text(_record(n + 1, lease))
    try:  # exclusive: of two runners taking over attempt n, one creates claim-(n+1)
        _link_or_create(mine, claim_file(d, n + 1))
    except FileExistsError:
        return None
    finally:
        mine.unlink(missing_ok=True)
    return n + 1


def _link_or_create(source: Path, target: Path) -> None:
    """``os.link``; where the file system has no hard links, an exclusive create filled at once instead."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as f:
            f.write(source.read_text())


def hand_over(d: Path, attempt: int) -> float:
    """Make this process the holder of attempt `attempt` (the process that runs it, after the driver took it);
    returns its lease."""
    try:
        lease = float(json.loads(claim_file(d, attempt).read_text()).get("lease", LEASE_SECONDS))
    except (FileNotFoundError, json.JSONDecodeError):
        lease = LEASE_SECONDS
    write_text(claim_file(d, attempt), _record(attempt, lease))
    return lease


def renew(d: Path, attempt: int) -> None:
    """Touch attempt `attempt`'s claim: its holder is alive."""
    try:
        os.utime(claim_file(d, attempt))
    except FileNotFoundError:
        pass


def expire(d: Path, attempt: int) -> None:
    """End attempt `attempt`'s lease now (its process is known to have ended)."""
    try:
        os.utime(claim_file(d, attempt), (0, 0))
    except FileNotFoundError:
        pass


def superseded(d: Path, attempt: int) -> bool:
    """Whether a later attempt was taken (this one's holder stalled past its lease): its result must not count."""
    return latest(d)[0] > attempt


def release(d: Path) -> None:
    """Remove every claim of a finished run."""
    for p in Path(d).glob("claim-*.json"):
        p.unlink(missing_ok=True)


class Heartbeat:
    """Renew a claim every quarter lease from a daemon thread, while the run executes (a context manager)."""

    def __init__(self, d: Path, attempt: int, lease: float):
        self.d, self.attempt, self.every = d, attempt, max(0.05, lease / 4)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.every):
            renew(self.d, self.attempt)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def log_tail(d: Path, lines: int = 20) -> str:
    """The last `lines` lines of the run's ``run.log`` (empty if it has none)."""
    try:
        text = (Path(d) / LOG_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
