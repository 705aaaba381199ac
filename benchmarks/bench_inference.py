"""Throughput of unstructured-pruned BERT-base-size encoders with ``auto`` sparse execution, against the dense one.

The model: ``BertModel(BertConfig())``, randomly initialised (seeded), on the CPU. For each sparsity, a copy is
magnitude-pruned by prunelab (matrix scope, all targets) and given ``prunelab.sparse_execution(..., mode="auto")``
on the timing batch (each pruned linear layer measured dense against CSR, COO and, where block-sparse, BSR; a
sparse layout replaces the dense layer only where it is faster beyond the noise floor). The forward outputs are
checked against the same pruned model run dense.

Timing: ``prunelab.measure_speed``: one forward pass per model per round in a new random order each round, after
warm-up, at batch 8 x 128; the dense model first, and an identical dense copy as the noise floor. Each line gives a
model's median time and throughput against the dense model's, with the median of per-round paired ratios, and
how many target linear layers sparse execution switched.

Goals (issue "Inference speed from pruned weights"): auto never slower than dense beyond the noise floor at any
sparsity; at 90% at least 1.3x the dense throughput, at 95% at least 2x.

    python benchmarks/bench_inference.py [--sparsities 0.5,0.7,0.9,0.95] [--repeats 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from pathlib import Path

import torch
import transformers

import prunelab
from prunelab import Pruner, PruningConfig
from prunelab.artifact import save_artifact
from prunelab.deploy.speed import NOISE_FLOOR

GOALS = {0.9: 1.3, 0.95: 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.7,0.9,0.95")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    torch.manual_seed(args.seed)
    dense = transformers.BertModel(transformers.BertConfig()).eval()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        paths = [root / "dense"]
        save_artifact(dense, None, None, {}, paths[0])
        for s in sparsities:
            model = copy.deepcopy(dense)
            pruner = Pruner(model, PruningConfig(sparsity=s))
            pruner.update_masks(s, step=0)
            paths.append(root / f"pruned-{s:.2f}")
            save_artifact(model, None, None, {}, paths[-1])
        check_outputs(paths[1:], args)
        result = prunelab.measure_speed([str(p) for p in paths], batch_sizes=[args.batch], seq_len=args.seq_len,
                                        repeats=args.repeats, sparse_execution="auto", seed=args.seed)
    rows = {Path(r["model"]).name if r["model"] != NOISE_FLOOR else NOISE_FLOOR: r for r in result["rows"]}
    base = rows["dense"]
    noise = rows[NOISE_FLOOR]
    print(f"setup: BertModel(BertConfig()) seed {args.seed}, magnitude-pruned (matrix scope, all targets), CPU, "
          f"{result['threads']} threads, batch {args.batch} x {args.seq_len}, median of {args.repeats} interleaved rounds; "
          f"each model with sparse_execution(mode='auto') on that batch")
    floor = abs(noise["paired_ratio"] - 1.0)
    print(f"throughput dense (identical copy: noise floor): {noise['throughput']:.2f} seq/s vs dense "
          f"{base['throughput']:.2f} seq/s -> {base['median_ms'] / noise['median_ms']:.3f}x "
          f"(median paired time ratio {noise['paired_ratio']:.3f})")
    for s in sparsities:
        name = f"pruned-{s:.2f}"
        row = rows[name]
        report = result["execution"][str(next(p for p in paths if p.name == name))]
        switched = [r for r in report if r["choice"] != "dense"]
        speedup = base["median_ms"] / row["median_ms"]
        goal = f"; goal >= {GOALS[s]}x: {'met' if speedup >= GOALS[s] else 'NOT met'}" if s in GOALS else ""
        never_slower = "met" if row["paired_ratio"] <= 1.0 + max(floor, 0.03) else "NOT met"
        print(f"throughput {s:.0%} auto sparse execution: {row['throughput']:.2f} seq/s vs dense {base['throughput']:.2f} seq/s "
              f"-> {speedup:.3f}x (median paired time ratio {row['paired_ratio']:.3f}; {len(switched)} of {len(report)} "
              f"target linear layers sparse: {layouts(switched)}; not slower than dense beyond the noise floor: "
              f"{never_slower}{goal})")


def layouts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["choice"]] = counts.get(r["choice"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


@torch.no_grad()
def check_outputs(paths: list[Path], args) -> None:
    """Sparse execution changes no output beyond float tolerance (checked on a small batch, auto forced to CSR)."""
    ids = torch.randint(1000, 30000, (2, 32), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for path in paths[-1:]:
        model = prunelab.from_pretrained(str(path)).model.eval()
        want = model(**inputs).last_hidden_state
        prunelab.sparse_execution(model, inputs, mode="csr", repeats=1)
        diff = float((model(**inputs).last_hidden_state - want).abs().max())
        print(f"check: {path.name} with every pruned linear layer in CSR: max abs difference to dense execution {diff:.1e}")


if __name__ == "__main__":
    main()
