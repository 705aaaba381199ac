"""Median optimizer-step time of a 6-layer BERT MLM (hidden 384): dense vs prunelab enforced masks vs
torch.nn.utils.prune hooks, interleaved in one process (the order rotates every step) so machine noise
hits all three alike.

A step is forward + backward + AdamW step (+ ``pruner.step`` for prunelab, told the optimizer as
``PruningCallback`` tells it the Trainer's: gradient hooks zero pruned gradients, and AdamW on zero state keeps
pruned weights at 0.0 with no re-zeroing pass). Masks: 50% magnitude, matrix scope, all targets incl. word
embeddings. A second, identical dense copy is timed too: its ratio to dense
is the noise floor of the machine. The ratio is the median over steps of the paired ratio to dense (the variants
take step i on the same batch, back to back). The time prunelab itself spends per step (``pruner.step`` plus
the gradient hooks) is also timed directly. Prints one line per figure, ending with the ratio to dense.

    python benchmarks/bench_training.py [--steps 20] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import transformers
from torch.nn.utils import prune

from prunelab import Pruner, PruningConfig, resolve_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    dense = transformers.BertForMaskedLM(config).train()
    control, masked, hooked = copy.deepcopy(dense), copy.deepcopy(dense), copy.deepcopy(dense)

    pruner = Pruner(masked, PruningConfig(sparsity=0.5))
    pruner.step(0)
    for t in resolve_targets(hooked):
        prune.l1_unstructured(hooked.get_submodule(t.param_name.rsplit(".", 1)[0]), "weight", amount=0.5)

    own = []  # seconds prunelab spends per step: the gradient hooks plus pruner.step
    for param in pruner._params.values():  # time the hooks by wrapping them with a timer hook pair
        param.register_post_accumulate_grad_hook(lambda p: own.append(-time.perf_counter()))
    pruner.remove_hooks()
    pruner._register_grad_hooks()
    for param in pruner._params.values():
        param.register_post_accumulate_grad_hook(lambda p: own.append(time.perf_counter()))

    runs = {
        "dense": (dense, None),
        "dense (identical copy: noise floor)": (control, None),
        "prunelab enforced": (masked, pruner),
        "torch.nn.utils.prune hooks": (hooked, None),
    }
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01) for name, (model, _) in runs.items()}
    pruner.attach_optimizer(optimizers["prunelab enforced"])
    times: dict[str, list[float]] = {name: [] for name in runs}
    g = torch.Generator().manual_seed(0)
    for step in range(1, args.warmup + args.steps + 1):
        ids = torch.randint(1000, config.vocab_size, (args.batch, args.seq), generator=g)
        names = list(runs)
        own_step = 0.0
        for name in names[step % len(names):] + names[: step % len(names)]:  # every variant once per step, rotating who goes first
            model, pr = runs[name]
            start = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if pr is not None:
                own.clear()
                t0 = time.perf_counter()
                pr.step(step)
                own_step = time.perf_counter() - t0 + sum(own)
            if step > args.warmup:
                times[name].append(time.perf_counter() - start)
        if step > args.warmup:
            times.setdefault("own", []).append(own_step)

    zeros_held = all(bool((masked.get_parameter(t.param_name)[~pruner.masks[t.name]] == 0).all()) for t in pruner.targets)
    base = statistics.median(times["dense"])
    print(f"setup: BERT MLM 6x384, {sum(p.numel() for p in dense.parameters()) / 1e6:.1f}M params, batch {args.batch}x{args.seq}, "
          f"{args.steps} steps, {torch.get_num_threads()} threads; prunelab masks held after training: {zeros_held}")
    for name in runs:
        median = statistics.median(times[name])
        paired = statistics.median(t / b for t, b in zip(times[name], times["dense"]))  # step i: same batch for all
        print(f"median step time {name}: {median * 1000:.1f} ms vs dense {base * 1000:.1f} ms; median paired step ratio -> {paired:.3f}x")
    own = statistics.median(times["own"])
    print(f"prunelab own work per step (gradient hooks + pruner.step): {own * 1000:.1f} ms vs dense step {base * 1000:.1f} ms -> {(base + own) / base:.3f}x")


if __name__ == "__main__":
    main()
