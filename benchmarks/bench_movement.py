"""Time of the sort-order movement analysis on a BERT-base-size model (all ~109M target weights).

Two randomly initialised BertModel(BertConfig()) checkpoints: the second is the first plus small noise
(as after fine-tuning). Times ``sort_order_movement`` with one worker thread and with the default (one
per torch thread), `--repeat` times each, and prints the median, the CPU count and the load average
(the figure is only meaningful on an otherwise idle machine).

    python benchmarks/bench_movement.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import transformers

from prunelab.analysis import sort_order_movement
from prunelab.targets import resolve_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    before = transformers.BertModel(transformers.BertConfig()).eval()
    after = copy.deepcopy(before)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(torch.randn_like(p) * 0.002)
    numel = sum(t.numel for t in resolve_targets(before))
    print(f"BERT-base size: {numel:,} target weights; {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    for workers in (1, None):
        seconds = []
        for _ in range(args.repeat):
            load = os.getloadavg()[0]
            start = time.perf_counter()
            result = sort_order_movement(before, after, workers=workers)
            seconds.append(time.perf_counter() - start)
            print(f"  workers={workers or torch.get_num_threads()}: {seconds[-1]:.2f} s (load average before: {load:.2f})")
        print(f"movement, {workers or torch.get_num_threads()} worker(s): median {statistics.median(seconds):.2f} s; "
              f"mean |movement| {result['overall']['mean_abs']:.3f} points")


if __name__ == "__main__":
    main()
