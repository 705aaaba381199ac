"""Which weights hard movement's early scores prune: the packaged MiniLM-L6 with a fresh classifier, fine-tuned dense
on the real SST-2 for --steps steps (batch 32, 64 tokens, AdamW at lr 1e-4) while a Pruner accumulates movement's
scores; then the encoder's linear layers pruned one-shot to --sparsity per matrix by magnitude, random and movement.

For each: the share of every matrix's largest-magnitude tenth it prunes (averaged over matrices; random's is the
sparsity by construction, the baseline), and the loss on 640 held-out training sentences against the dense model's,
measured in the same run.

    python benchmarks/bench_early_scores.py [--steps 100] [--sparsity 0.31] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sparsity", type=float, default=0.31)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    from prunelab import Pruner, PruningConfig
    from prunelab.artifact import load_model
    from prunelab.data.glue import get_task, read_split
    from prunelab.pipelines.grid import load_classifier

    torch.manual_seed(0)
    task = get_task("sst2")
    _, tokenizer = load_model("minilm")
    model = load_classifier("minilm", task, 0)
    rows = read_split(Path(args.data) / "glue", task, "train")
    random.Random(0).shuffle(rows)
    train, held = rows[:32 * args.steps], rows[32 * args.steps:32 * args.steps + 640]

    def batches(examples):
        for i in range(0, len(examples), 32):
            chunk = examples[i:i + 32]
            enc = tokenizer([a for a, _, _ in chunk], truncation=True, max_length=64, padding=True, return_tensors="pt")
            enc["labels"] = torch.tensor([int(label) for _, _, label in chunk])
            yield enc

    config = dict(sparsity=args.sparsity, exclude=["embeddings", "pooler"], schedule="oneshot")
    tracker = Pruner(model, PruningConfig(criterion="movement", **config))  # scores only: no masks before update_masks
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    started = time.perf_counter()
    model.train()
    for batch in tqdm(list(batches(train)), desc="dense steps"):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    held_batches = list(batches(held))

    def loss(m) -> float:
        with torch.no_grad():
            return sum(float(m(**b).loss) for b in held_batches) / len(held_batches)

    dense = loss(model)
    print(f"MiniLM-L6, {args.steps} dense steps on SST-2 ({time.perf_counter() - started:.0f} s), held-out loss {dense:.3f}; "
          f"encoder linear layers pruned one-shot to {args.sparsity:.0%} per matrix:")
    for criterion in ("random", "magnitude", "movement"):
        pruned = copy.deepcopy(model)
        pruner = Pruner(pruned, PruningConfig(criterion=criterion, **config))
        if criterion == "movement":
            pruner.movement.update({n: s.clone() for n, s in tracker.movement.items()})
        pruner.update_masks(args.sparsity, step=0)
        shares = []
        for t in pruner.targets:
            size = model.get_parameter(t.param_name).detach().abs()
            largest = size >= size.flatten().kthvalue(int(0.9 * size.numel())).values
            shares.append(float((~pruner.masks[t.name])[largest].float().mean()))
        share = sum(shares) / len(shares)
        print(f"{criterion:<10} prunes {100 * share:4.0f}% of each matrix's largest tenth ({share / args.sparsity:.2f}x "
              f"random's expectation)   held-out loss {loss(pruned):.3f} ({loss(pruned) / dense:.2f}x dense)")


if __name__ == "__main__":
    main()
