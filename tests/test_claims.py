"""The study runner's liveness: a dead runner's run (a child that never took over, a worker of another host, a
process killed after taking over) is taken over once its lease ends, tried at most --max-attempts times, then
reported failed with the tail of its log; never a wait or a retry without end. Each study runs in a thread with a
timeout: a hang fails the test instead of hanging the suite."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket
import sys
import threading
import time

import pytest

from prunelab.study import claims, executors, recipes
from prunelab.study.plan import expand
from prunelab.study.runner import init_study_dir, run_dir, run_study, status_of
from prunelab.study.spec import load_spec
from study_fixtures import make_study


def run_with_timeout(timeout: float = 120, **kwargs) -> dict:
    """``run_study(**kwargs)`` in a thread; fails if it has not returned within `timeout` seconds."""
    box = {}

    def target():
        try:
            box["counts"] = run_study(progress=False, **kwargs)
        except BaseException as error:  # noqa: BLE001 (handed to the test)
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the study did not end within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["counts"]


@pytest.fixture
def fast_kinds(monkeypatch):
    """Every kind of run replaced by one that returns at once (what the runner does with them is under test)."""
    def fake(spec, data_dir, root, run, work):
        work.mkdir(parents=True)
        return {"model": str(work), "dev_score": 50.0, "dev": {}, "train_loss_full": 1.0, "realized_sparsity": 0.0,
                "dev_loss_before": 1.0, "dev_loss_after": 1.0, "seconds": 0.0}

    for kind, entry in list(recipes.RECIPES.items()):
        monkeypatch.setitem(recipes.RECIPES, kind, dataclasses.replace(entry, run=fake))


def test_a_child_that_dies_before_taking_over_is_retried_then_failed_with_its_log(tmp_path, monkeypatch):
    # the subprocess dies at once, before it takes over the claim (once it showed "running" for ever)
    monkeypatch.setattr(executors, "CHILD_COMMAND", [sys.executable, "-c", "print('child starting, about to die'); raise SystemExit(3)"])
    spec = load_spec(make_study(tmp_path))
    counts = run_with_timeout(spec=spec, root=tmp_path / "out", jobs=2, max_attempts=2)
    pretrains = [r for r in expand(spec) if r.recipe == "pretrain"]
    assert counts["failed"] == len(pretrains) and counts["done"] == 0 and counts["running"] == 0
    for run in pretrains:
        d = run_dir(tmp_path / "out", run.id)
        error = json.loads((d / "error.json").read_text())
        assert error["attempts"] == 2 and "no result after 2 attempts" in error["error"]
        assert "child starting, about to die" in error["error"]  # the tail of its log
        log = (d / "run.log").read_text()
        assert log.count("child starting, about to die") == 2 and "attempt 2 in a subprocess" in log


KILLED_AFTER_TAKEOVER = """
import os, signal, sys
from pathlib import Path
from prunelab.study import claims
root, run_id, attempt = sys.argv[1], sys.argv[2], int(sys.argv[4])
claims.hand_over(Path(root) / "runs" / run_id, attempt)
print("took over attempt", attempt, "and was killed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_after_taking_over_is_tried_max_attempts_times(tmp_path, monkeypatch):
    # the subprocess takes over its claim, then the OOM killer (SIGKILL) ends it: once retried without end
    monkeypatch.setattr(executors, "CHILD_COMMAND", [sys.executable, "-c", KILLED_AFTER_TAKEOVER])
    spec = load_spec(make_study(tmp_path))
    counts = run_with_timeout(spec=spec, root=tmp_path / "out", jobs=2, max_attempts=3)
    run = next(r for r in expand(spec) if r.recipe == "pretrain")
    d = run_dir(tmp_path / "out", run.id)
    error = json.loads((d / "error.json").read_text())
    assert counts["failed"] == 3 and error["attempts"] == 3
    assert "took over attempt 3 and was killed" in error["error"]
    assert sorted(p.name for p in d.glob("claim-*.json")) == ["claim-1.json", "claim-2.json", "claim-3.json"]


def test_a_dead_claim_of_another_host_expires_and_is_taken_over(tmp_path, fast_kinds):
    spec = load_spec(make_study(tmp_path))
    out = init_study_dir(spec, tmp_path / "out", spec.data_dir())
    run = next(r for r in expand(spec) if r.recipe == "pretrain")
    d = run_dir(out, run.id)
    d.mkdir(parents=True)
    dead = json.dumps({"attempt": 1, "pid": 1, "host": "a-ray-worker-that-died", "lease": 2.0, "since": time.time()})
    (d / "claim-1.json").write_text(dead)
    (d / "claim.json").write_text(dead)  # the same claim as an older prunelab wrote it: it waited on it for ever
    started = time.monotonic()
    counts = run_with_timeout(spec=spec, root=out, lease_seconds=2.0)
    assert counts["done"] == counts["total"] and counts["failed"] == 0
    assert time.monotonic() - started >= 1.0  # the claim was respected while its lease lasted
    assert "attempt 2" in (d / "attempts.log").read_text()  # taken over as the next attempt


def test_a_live_claim_of_another_host_is_respected(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "claim-1.json").write_text(json.dumps({"attempt": 1, "pid": 1, "host": "elsewhere", "lease": 60.0}))
    assert claims.take(d) is None  # renewed just now (written): its holder is alive as far as anyone can tell
    os.utime(d / "claim-1.json", (time.time() - 61, time.time() - 61))
    assert claims.take(d) == 2  # a lease ago: expired, on whichever host it was


def test_a_claim_of_a_gone_local_process_expires_at_once(tmp_path):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    d = tmp_path / "run"
    d.mkdir()
    (d / "claim-1.json").write_text(json.dumps({"attempt": 1, "pid": pid, "host": socket.gethostname(), "lease": 600}))
    assert claims.take(d) == 2


def _take_at_once(d, barrier, results):
    barrier.wait()
    results.put(claims.take(d))


def test_two_runners_that_find_the_same_expired_claim_take_it_once(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "claim-1.json").write_text(json.dumps({"attempt": 1, "pid": 1, "host": "elsewhere", "lease": 1.0}))
    os.utime(d / "claim-1.json", (0, 0))
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):  # several rounds: the race is decided by the exclusive create, not by timing
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_take_at_once, args=(d, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        taken = sorted((results.get(timeout=5), results.get(timeout=5)), key=lambda x: x is None)
        n = claims.latest(d)[0]
        assert taken == [n, None]  # one runner took the new attempt, the other found it taken
        claims.expire(d, n)


def test_the_holder_renews_its_lease_while_the_run_lasts(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    attempt = claims.take(d, lease=0.4)
    lease = claims.hand_over(d, attempt)
    os.utime(claims.claim_file(d, attempt), (0, 0))
    with claims.Heartbeat(d, attempt, lease):
        time.sleep(0.5)
        assert claims.is_live(d, attempt, claims.latest(d)[1])  # renewed by the heartbeat
    time.sleep(0.5)
    assert time.time() - claims.claim_file(d, attempt).stat().st_mtime > 0.4  # no renewal once the run ended


def test_status_of_a_run_follows_its_lease(tmp_path, fast_kinds):
    spec = load_spec(make_study(tmp_path))
    out = init_study_dir(spec, tmp_path / "out", spec.data_dir())
    run = next(r for r in expand(spec) if r.recipe == "pretrain")
    d = run_dir(out, run.id)
    d.mkdir(parents=True)
    (d / "claim-1.json").write_text(json.dumps({"attempt": 1, "pid": 1, "host": "elsewhere", "lease": 30.0}))
    assert status_of(out, run) == "running"
    os.utime(d / "claim-1.json", (0, 0))
    assert status_of(out, run) == "pending"


def test_ray_never_retries_a_task_itself():
    assert executors.RAY_TASK_OPTIONS == {"max_retries": 0, "retry_exceptions": False}
