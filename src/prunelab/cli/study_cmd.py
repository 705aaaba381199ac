"""`prunelab study plan|run|status|report`: the Compressing BERT experiment grid as one resumable study."""

from __future__ import annotations

import argparse
import json
from ..errors import InputError, MissingInputError


def register(sub) -> None:
    p = sub.add_parser("study", help="plan, run, follow and report an experiment grid from a TOML spec")
    s = p.add_subparsers(dest="study_command", required=True, metavar="SUBCOMMAND")

    plan = s.add_parser("plan", help="print the expanded runs and their dependencies")
    plan.add_argument("spec", help="study TOML file")
    plan.add_argument("--json", action="store_true", help="print every run as JSON")
    plan.set_defaults(run=run_plan)

    go = s.add_parser("run", help="run (or resume) a study; finished runs are never redone; exit code 1 if runs failed")
    go.add_argument("spec", help="study TOML file")
    go.add_argument("--out", required=True, help="study directory")
    go.add_argument("--data", help="data root (GLUE and corpus paths in the spec are relative to it); default $PRUNELAB_DATA")
    go.add_argument("--executor", choices=("local", "ray"), default="local")
    go.add_argument("--jobs", type=int, default=1, help="local executor: runs at a time (each in its own process)")
    go.add_argument("--address", help="ray executor: cluster address (default: start a local Ray instance)")
    go.add_argument("--retry-failed", action="store_true", help="run the failed runs again")
    go.add_argument("--max-attempts", type=int, default=2, metavar="N",
                    help="tries of a run whose process dies without a result (killed, out of memory) before it is "
                         "recorded failed with the tail of its log (default 2)")
    go.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    go.set_defaults(run=run_run)

    status = s.add_parser("status", help="counts of done/failed/running/pending runs")
    status.add_argument("dir", help="study directory")
    status.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until nothing is running")
    status.set_defaults(run=run_status)

    report = s.add_parser("report", help="write DIR/report: Table 1 (md, csv, tex), Figures 1 and 2, the layer-drop table "
                                         "and figure (when the study has that regime), report.md")
    report.add_argument("dir", help="study directory")
    report.add_argument("--paper-metrics", action="store_true",
                        help="score every cell, and choose its best learning rate, by the metric Compressing BERT (Gordon et "
                             "al. 2020) reports instead of the task's official GLUE score: dev accuracy for every "
                             "classification task (MNLI: matched only), Pearson correlation for STS-B; a run that did "
                             "not record it (a CoLA run from before accuracy was recorded) leaves its cell missing. The "
                             "report keeps its file names (report.md says which metric it uses) and replaces the one "
                             "there; run without the flag for the official scores again")
    report.set_defaults(run=run_report)

    internal = s.add_parser("exec-run", help=argparse.SUPPRESS)
    internal.add_argument("dir")
    internal.add_argument("run_id")
    internal.add_argument("--attempt", type=int, default=None)
    internal.set_defaults(run=run_exec)


def run_plan(args) -> int:
    from ..study.plan import describe, expand
    from ..study.recipes import RECIPES
    from ..study.spec import load_spec

    spec = load_spec(args.spec)
    plan = describe(expand(spec))
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    counts = ", ".join(f"{plan[name]} {recipe.label}" for name, recipe in RECIPES.items() if plan[name])
    print(f"study {spec.name}: {plan['runs']} runs ({counts})")
    for item in plan["items"]:
        after = f"  <- {', '.join(item['depends_on'])}" if item["depends_on"] else f"  (used by {item['used_by']} runs)"
        print(f"  {item['id']}{after}")
    return 0


def run_run(args) -> int:
    from ..study.report import write_report
    from ..study.runner import run_study
    from ..study.spec import load_spec

    spec = load_spec(args.spec)
    data_dir = spec.data_dir(args.data)
    if data_dir is not None and not data_dir.is_dir():
        raise MissingInputError(f"data directory {data_dir} not found; pass --data DIR or set PRUNELAB_DATA")
    if data_dir is None and not _hub_reachable():
        raise InputError("no data reachable: no --data DIR or PRUNELAB_DATA was given and the Hugging Face hub cannot be "
                         "reached; pass --data DIR holding glue/ (download_glue_data.py layout) and wikitext-2/")
    counts = run_study(spec, args.out, data_dir=data_dir, executor=args.executor, jobs=args.jobs,
                       retry_failed=args.retry_failed, address=args.address, max_attempts=args.max_attempts)
    print(_counts(counts))
    for run_id, error in counts["failures"].items():
        print(f"  failed {run_id}: {error.splitlines()[0]}")
    if not args.no_report:
        print(f"report: {write_report(args.out) / 'report.md'}")
    return 1 if counts["failed"] else 0  # failures are recorded, not fatal; the exit code still tells scripts


def run_status(args) -> int:
    import time

    from ..study.runner import study_status

    while True:
        counts = study_status(args.dir)
        width, done = 30, counts["done"]
        filled = int(width * done / counts["total"]) if counts["total"] else width
        print(f"[{'#' * filled}{'.' * (width - filled)}] {_counts(counts)}", flush=True)
        if not args.watch or not counts["running"]:
            break
        time.sleep(args.watch)
    for run_id, error in counts["failures"].items():
        print(f"  failed {run_id}: {error.splitlines()[0]}")
    return 0


def run_report(args) -> int:
    from ..study.report import write_report

    print(f"report: {write_report(args.dir, paper_metrics=args.paper_metrics) / 'report.md'}")
    return 0


def run_exec(args) -> int:
    from ..study.execute import execute_claimed

    return 0 if execute_claimed(args.dir, args.run_id, args.attempt) == "done" else 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _counts(c: dict) -> str:
    return (f"study {c['study']}: {c['done']}/{c['total']} done, {c['failed']} failed, {c['running']} running, "
            f"{c['pending']} pending, {c['blocked']} blocked")
