"""Time and peak extra memory to compute masks on a BERT-base-size model, prunelab vs torch.nn.utils.prune.

All targets incl. word embeddings (~108M weights) of a randomly initialised BertModel(BertConfig()).
Each case runs in a fresh subprocess; peak extra memory = peak RSS during the call minus RSS before it
(VmHWM reset through /proc/self/clear_refs). Prints one line per figure, ending with the ratio.

    python benchmarks/bench_masks.py [--sparsities 0.5,0.9]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def run_case(tool: str, scope: str, sparsity: float) -> dict:
    """Run in a subprocess: build the model, compute masks once, report seconds, MB extra and zeros."""
    import torch
    import transformers
    from torch.nn.utils import prune

    from prunelab import compute_masks, resolve_targets

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig())
    targets = resolve_targets(model)
    weights = {t.name: model.get_parameter(t.name).detach() for t in targets}
    modules = [(model.get_submodule(t.name.rsplit(".", 1)[0]), "weight") for t in targets]
    n = sum(w.numel() for w in weights.values())

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    if tool == "prunelab":
        masks = compute_masks(weights, sparsity, scope=scope)
        seconds = time.perf_counter() - start
        zeros = sum(int((~m).sum()) for m in masks.values())
    elif scope == "matrix":
        for module, name in modules:
            prune.l1_unstructured(module, name, amount=sparsity)
        seconds = time.perf_counter() - start
        zeros = sum(int((module.weight_mask == 0).sum()) for module, _ in modules)
    else:
        prune.global_unstructured(modules, pruning_method=prune.L1Unstructured, amount=sparsity)
        seconds = time.perf_counter() - start
        zeros = sum(int((module.weight_mask == 0).sum()) for module, _ in modules)
    extra_mb = (_rss_kb("VmHWM") - before) / 1024
    return {"seconds": seconds, "extra_mb": extra_mb, "zeros": zeros, "n": n}


def measure(tool: str, scope: str, sparsity: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", tool, scope, str(sparsity)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.9")
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        tool, scope, sparsity = args.case
        print(json.dumps(run_case(tool, scope, float(sparsity))))
        return

    baseline = {"matrix": "torch l1_unstructured", "global": "torch global_unstructured"}
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        for scope in ("matrix", "global"):
            ours, theirs = measure("prunelab", scope, sparsity), measure("torch", scope, sparsity)
            label = f"{scope} {sparsity:.0%} ({ours['n'] / 1e6:.1f}M weights)"
            exact = round(sparsity * ours["n"])
            if scope == "global":
                print(f"{label} zeros: prunelab {ours['zeros']} vs exact round(s*N) {exact} -> {'exact' if ours['zeros'] == exact else 'MISMATCH'}")
            print(f"{label} time: prunelab {ours['seconds']:.2f} s vs {baseline[scope]} {theirs['seconds']:.2f} s -> {theirs['seconds'] / ours['seconds']:.1f}x faster")
            print(f"{label} peak extra memory: prunelab {ours['extra_mb']:.0f} MB vs {baseline[scope]} {theirs['extra_mb']:.0f} MB -> {ours['extra_mb'] / theirs['extra_mb']:.2f}x")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
