"""Parameters, bytes and CPU forward latency of a structurally pruned BERT-base-size encoder against the dense one.

The model: ``BertModel(BertConfig())``, randomly initialised (seeded). ``prunelab.methods.structured.prune_units``
removes 50% of the attention heads and 50% of the FFN neurons (global magnitude ranking, each layer keeping a head);
the pruned model is saved and loaded back with ``prunelab.from_pretrained`` (what a user runs), and both models are
exported with ``prunelab export-onnx`` (each export checked against PyTorch in onnxruntime).

Latency: one forward pass (``torch.no_grad``, eval) at each batch shape, random token ids, full attention mask. The
variants run interleaved, one pass each in a new (seeded) random order every round, --repeats times after two warm-up
rounds, so machine noise and order effects hit them alike; medians are printed, each against the dense model's median in the same run, with the median of the per-round
paired ratios. An identical copy of the dense model is timed as a variant too: its ratio is the noise floor.
onnxruntime sessions use as many intra-op threads as torch does, without spinning (its idle threads would otherwise
busy-wait into the next variant's time).

Goals (issue "Structured pruning"): PyTorch latency of the pruned model at most 0.6x dense at 8 x 128; onnxruntime
on the pruned model faster than PyTorch on it.

    python benchmarks/bench_structured.py [--repeats 20] [--shapes 1x128,8x128] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import transformers

import prunelab
from prunelab.artifact import save_artifact
from prunelab.deploy.onnx import export_onnx
from prunelab.methods.structured import prune_units, unit_counts

GOAL_TORCH, GOAL_SHAPE = 0.6, (8, 128)


def encoder_params(model) -> int:
    return sum(p.numel() for p in model.encoder.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", default="1x128,8x128")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]

    torch.manual_seed(args.seed)
    dense = transformers.BertModel(transformers.BertConfig()).eval()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        save_artifact(dense, None, None, {}, root / "dense")
        pruned_in_memory = copy.deepcopy(dense)
        prune_units(pruned_in_memory, heads=0.5, ffn=0.5, scope="global")
        save_artifact(pruned_in_memory, None, None, {}, root / "pruned")
        pruned = prunelab.from_pretrained(str(root / "pruned")).model.eval()
        # every timed model in memory allocated the same way (a copy), none mapped from a file or built in pieces
        dense, noise, pruned = copy.deepcopy(dense), copy.deepcopy(dense), copy.deepcopy(pruned)
        counts = unit_counts(pruned)
        sizes = {name: sum(f.stat().st_size for f in (root / name).glob("*.safetensors")) for name in ("dense", "pruned")}
        onnx = {}
        for name in ("dense", "pruned"):
            info = export_onnx(str(root / name), root / f"{name}.onnx")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            # no busy-waiting threads after a run: they would slow whichever variant runs next
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            onnx[name] = (onnxruntime.InferenceSession(str(root / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]),
                          info)

        print(f"setup: BertModel(BertConfig()) seed {args.seed}, 50% of heads and 50% of FFN neurons removed by global "
              f"magnitude; heads per layer {counts['heads']}; FFN width per layer {counts['ffn']}; {torch.get_num_threads()} "
              f"torch threads; median of {args.repeats} interleaved repeats; onnxruntime {onnxruntime.__version__} "
              f"(max abs difference to PyTorch: dense {onnx['dense'][1]['max_abs_diff']:.1e}, pruned "
              f"{onnx['pruned'][1]['max_abs_diff']:.1e})")
        p_dense, p_pruned = encoder_params(dense), encoder_params(pruned)
        print(f"encoder parameters: pruned {p_pruned / 1e6:.2f}M vs dense {p_dense / 1e6:.2f}M -> {p_pruned / p_dense:.3f}x")
        all_dense, all_pruned = (sum(p.numel() for p in m.parameters()) for m in (dense, pruned))
        print(f"all parameters (embeddings included): pruned {all_pruned / 1e6:.2f}M vs dense {all_dense / 1e6:.2f}M -> {all_pruned / all_dense:.3f}x")
        print(f"bytes of model.safetensors: pruned {sizes['pruned'] / 1e6:.1f} MB vs dense {sizes['dense'] / 1e6:.1f} MB -> {sizes['pruned'] / sizes['dense']:.3f}x")

        for batch, length in shapes:
            ids = torch.randint(1000, 30000, (batch, length), generator=torch.Generator().manual_seed(1))
            mask = torch.ones_like(ids)
            feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

            def torch_forward(model):
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask)

            variants = {
                "PyTorch dense": lambda: torch_forward(dense),
                "PyTorch dense (identical copy: noise floor)": lambda: torch_forward(noise),
                "PyTorch pruned": lambda: torch_forward(pruned),
                "onnxruntime dense": lambda: onnx["dense"][0].run(None, feeds),
                "onnxruntime pruned": lambda: onnx["pruned"][0].run(None, feeds),
            }
            times = {name: [] for name in variants}
            rng = random.Random(args.seed)
            for r in range(args.repeats + 2):
                for name in rng.sample(list(variants), len(variants)):  # a new order each round
                    start = time.perf_counter()
                    variants[name]()
                    if r >= 2:  # two warm-up rounds
                        times[name].append(time.perf_counter() - start)
            med = {name: statistics.median(t) for name, t in times.items()}
            base = "PyTorch dense"

            def line(name, against=base, goal=""):
                paired = statistics.median(np.array(times[name]) / np.array(times[against]))
                print(f"{batch}x{length} latency {name}: {med[name] * 1e3:.1f} ms vs {against} {med[against] * 1e3:.1f} ms "
                      f"-> {med[name] / med[against]:.3f}x (median paired ratio {paired:.3f}x){goal}")

            for name in variants:
                if name == base:
                    continue
                goal = ""
                if name == "PyTorch pruned" and (batch, length) == GOAL_SHAPE:
                    goal = f" (goal <= {GOAL_TORCH}x: {'met' if med[name] / med[base] <= GOAL_TORCH else 'NOT met'})"
                line(name, goal=goal)
            ok = med["onnxruntime pruned"] < med["PyTorch pruned"]
            line("onnxruntime pruned", against="PyTorch pruned",
                 goal=f" (goal: onnxruntime faster than PyTorch on the pruned model: {'met' if ok else 'NOT met'})")


if __name__ == "__main__":
    main()
