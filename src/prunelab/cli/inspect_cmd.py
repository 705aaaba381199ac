"""`prunelab inspect MODEL`: print the resolved table of prunable targets and their current sparsity."""

from __future__ import annotations

import json

from ..oneshot import inspect
from .options import add_model


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show the prunable targets of a model and their sparsity")
    add_model(p)
    p.add_argument("--include", help="comma-separated kinds to show (default: all)")
    p.add_argument("--exclude", help="comma-separated kinds to hide")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    table = inspect(args.model, include=args.include, exclude=args.exclude)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{table['model']}  ({table['model_type']}, {table['model_class']})")
    has_masks = any("mask_sparsity" in row for row in table["targets"])
    header = f"{'name':<52} {'kind':<18} {'layer':>5} {'shape':<16} {'count':>10} {'sparsity':>9}"
    print(header + (f" {'mask':>7}" if has_masks else ""))
    for row in table["targets"]:
        layer = "-" if row["layer"] is None else str(row["layer"])
        shape = "x".join(map(str, row["shape"]))
        line = f"{row['name']:<52} {row['kind']:<18} {layer:>5} {shape:<16} {row['numel']:>10} {row['sparsity']:>9.2%}"
        print(line + (f" {row['mask_sparsity']:>7.2%}" if "mask_sparsity" in row else ""))
    overall = table["overall"]
    print(f"{len(table['targets'])} targets, {overall['numel']:,} weights, overall sparsity {overall['sparsity']:.2%}")
    print("by kind: " + ", ".join(f"{k} {v['sparsity']:.2%}" for k, v in table["by_kind"].items()))
    return 0
