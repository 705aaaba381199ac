"""Time and peak memory of one-shot Wanda and SparseGPT on a BERT-base-size encoder, against magnitude, in one run;
and with ``--accuracy``, what each keeps of a fine-tuned MiniLM's dev accuracy on the real SST-2 with no retraining.

Speed: ``BertModel(BertConfig())`` (110M parameters, randomly initialised, seeded), the encoder's linear layers
pruned to --sparsity (embeddings and pooler excluded), 128 calibration sequences of 128 tokens (random ids, a
quarter of each padded). Each criterion runs on a fresh copy, in a child process of its own so its peak resident
memory (VmHWM: ru_maxrss would carry the parent's peak through vfork) is its own; magnitude is the baseline, measured in the same run. Times are medians over
--repeats runs.

Accuracy (``--accuracy``): the packaged MiniLM-L6 fine-tuned on --train-examples of SST-2 (``../shared/data``) for
--epochs at lr 1e-4, then pruned one-shot at 50/70/80% by each criterion (encoder linear layers only: ``--exclude
embeddings,pooler``; calibration: --calibration-samples SST-2 training sentences, default 128) and evaluated on the dev set, no retraining.

    python benchmarks/bench_criteria.py [--repeats 3] [--sparsity 0.5]
    python benchmarks/bench_criteria.py --accuracy [--data ../shared/data]
    python benchmarks/bench_criteria.py --during [--sparsity 0.9] [--budgets 2000x3,8000x3] [--criteria movement]
        [--exclude embeddings,pooler] [--prune-start 0.1 --prune-end 0.8]

During (``--during``): the packaged MiniLM pruned to --sparsity while fine-tuning on the real SST-2 (``distill-prune
--teacher none``, cubic schedule from --prune-start to --prune-end of training: by default over the first 70%; Sanh
et al. train the first 10% dense and reach the sparsity at 80%), by magnitude, random, movement and soft movement, at each
budget (training examples x epochs, lr 1e-4): dev accuracy at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time, torch, transformers
from prunelab import PruningConfig
from prunelab.oneshot import calibrated_masks
from prunelab.pruner import Pruner
torch.manual_seed(0)
torch.set_num_threads({threads})
model = transformers.BertModel(transformers.BertConfig()).eval()
g = torch.Generator().manual_seed(1)
batches = []
for _ in range(128 // 16):
    ids = torch.randint(1000, 30000, (16, 128), generator=g)
    mask = torch.ones_like(ids); mask[:, 96:] = 0
    batches.append({{"input_ids": ids, "attention_mask": mask}})
config = PruningConfig(sparsity={sparsity}, criterion="{criterion}", scope="matrix", exclude=["embeddings", "pooler"])
start = time.perf_counter()
if "{criterion}" == "magnitude":
    Pruner(model, config).update_masks({sparsity}, step=0)
else:
    calibrated_masks(model, config, batches)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_mb": next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024}}))
"""


def speed(args) -> None:
    import torch

    threads = torch.get_num_threads()
    print(f"BERT-base-size encoder (BertConfig()), sparsity {args.sparsity}, 128 x 128-token calibration sequences, "
          f"{threads} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    results = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads, sparsity=args.sparsity,
                                                                     criterion=criterion)],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results[criterion] = {"seconds": statistics.median(r["seconds"] for r in runs),
                              "peak_mb": statistics.median(r["peak_mb"] for r in runs)}
    base = results["magnitude"]
    for criterion, r in results.items():
        print(f"{criterion:<10} median {r['seconds']:8.2f} s ({r['seconds'] / base['seconds']:7.1f}x magnitude)   "
              f"peak RSS {r['peak_mb']:7.0f} MB ({r['peak_mb'] / base['peak_mb']:.2f}x magnitude)")


def accuracy(args) -> None:
    from prunelab.cli import main as prunelab

    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-criteria-"))
    tuned = work / "tuned"
    started = time.perf_counter()
    assert prunelab(["finetune", "minilm", "--task", "sst2", "--data-dir", str(data / "glue"), "--lr", "1e-4",
                     "--epochs", str(args.epochs), "--max-train-samples", str(args.train_examples), "--batch-size", "32",
                     "--max-seq-len", "64", "--save-model", "--out", str(tuned)]) == 0
    dense = 100 * dev_accuracy(tuned / "model", data / "glue")
    print(f"MiniLM-L6 fine-tuned on {args.train_examples} SST-2 examples, {args.epochs} epochs, lr 1e-4: dev accuracy "
          f"{dense:.1f} ({time.perf_counter() - started:.0f} s)")
    print(f"{'sparsity':>8} " + " ".join(f"{c:>10}" for c in ("magnitude", "wanda", "sparsegpt")))
    for sparsity in (0.5, 0.7, 0.8):
        row = []
        for criterion in ("magnitude", "wanda", "sparsegpt"):
            pruned = work / f"{criterion}-{sparsity}"
            calibration = (["--calibration", "sst2", "--data-dir", str(data / "glue"), "--max-seq-len", "64",
                            "--calibration-samples", str(args.calibration_samples)]
                           if criterion != "magnitude" else [])
            assert prunelab(["prune", str(tuned / "model"), "--criterion", criterion, "--sparsity", str(sparsity),
                             "--exclude", "embeddings,pooler", *calibration, "--out", str(pruned)]) == 0
            row.append(100 * dev_accuracy(pruned, data / "glue"))
        print(f"{sparsity:>8.0%} " + " ".join(f"{score:>10.1f}" for score in row)
              + "   (drop from dense: " + ", ".join(f"{dense - score:.1f}" for score in row) + ")")


def dev_accuracy(model_dir: Path, glue: Path) -> float:
    """Accuracy (a fraction) of the classifier in `model_dir` on SST-2's dev set, in batches of 64, 64 tokens."""
    import numpy as np
    import torch

    import prunelab
    from prunelab.data.glue import compute_metrics, get_task, read_split

    task = get_task("sst2")
    model, tokenizer, _, _ = prunelab.from_pretrained(str(model_dir))
    model.eval()
    dev = read_split(glue, task, "dev")
    predictions = []
    with torch.no_grad():
        for start in range(0, len(dev), 64):
            texts = [a for a, _, _ in dev[start:start + 64]]
            enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
            predictions.append(model(**enc).logits.float().numpy())
    labels = np.array([label for _, _, label in dev])
    return compute_metrics(task, np.concatenate(predictions), labels)["accuracy"]


CRITERIA_DURING = ("magnitude", "random", "movement", "soft-movement")


def during(args) -> None:
    from prunelab.cli import main as prunelab

    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-criteria-during-"))
    print(f"MiniLM-L6 pruned to {args.sparsity:.0%} while fine-tuning on SST-2 (no teacher), lr 1e-4, "
          f"{'left dense: ' + args.exclude if args.exclude else 'every prunable matrix'}; pruned from "
          f"{args.prune_start:.0%} to {args.prune_end:.0%} of training; dev accuracy:")
    print(f"{'budget':>12} " + " ".join(f"{c:>14}" for c in CRITERIA_DURING) + "   seconds")
    for budget in args.budgets.split(","):
        examples, epochs = budget.split("x")
        row, started = [], time.perf_counter()
        for criterion in CRITERIA_DURING:
            if criterion not in args.criteria.split(","):
                row.append(float("nan"))
                continue
            out = work / f"{criterion}-{budget}"
            assert prunelab(["distill-prune", "minilm", "--teacher", "none", "--task", "sst2", "--data-dir",
                             str(data / "glue"), "--sparsity", str(args.sparsity), "--criterion", criterion, "--lr", "1e-4",
                             "--epochs", epochs, "--max-train-samples", examples, "--batch-size", "32",
                             "--max-seq-len", "64", *(["--exclude", args.exclude] if args.exclude else []),
                             "--prune-start", str(args.prune_start), "--prune-end", str(args.prune_end),
                             "--out", str(out)]) == 0
            row.append(100 * json.loads((out / "metrics.json").read_text())["dev_score"])
        print(f"{budget:>12} " + " ".join(f"{score:>14.1f}" for score in row) + f"   {time.perf_counter() - started:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity", type=float, help="default 0.5 for the speed figures, 0.9 with --during")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--during", action="store_true")
    parser.add_argument("--budgets", default="2000x3,8000x3", help="--during: training examples x epochs, comma-separated")
    parser.add_argument("--exclude", default="", help="--during: kinds left dense, e.g. embeddings,pooler (Sanh et al.)")
    parser.add_argument("--prune-start", type=float, default=0.0, help="--during: fraction of training before pruning")
    parser.add_argument("--prune-end", type=float, default=0.7, help="--during: fraction of training by which the sparsity is reached")
    parser.add_argument("--criteria", default=",".join(CRITERIA_DURING), help="--during: which of them to run (nan: not run)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--calibration-samples", type=int, default=128, help="--accuracy: SST-2 training sentences")
    args = parser.parse_args()
    if args.sparsity is None:
        args.sparsity = 0.9 if args.during else 0.5
    accuracy(args) if args.accuracy else during(args) if args.during else speed(args)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
