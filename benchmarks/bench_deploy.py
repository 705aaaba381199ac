"""Bytes on disk, CPU latency and SST-2 dev accuracy of the deployment forms prunelab makes of a fine-tuned MiniLM.

The model: the packaged MiniLM-L6 (``minilm``) fine-tuned on --train-examples of the real SST-2 (``../shared/data``)
for --epochs at lr 1e-4, batch 16, 64 tokens, by prunelab's finetune pipeline (``save_model``); ``--model DIR``
reuses an already fine-tuned classifier instead (``--save-finetuned DIR`` keeps the run for that). Every variant is
built from it in a temporary directory by prunelab's own functions, each checked as those functions check:

    dense FP32 PyTorch          the fine-tuned classifier (the baseline), and an identical copy (the noise floor)
    dense FP32 ONNX             ``deploy.onnx.export_onnx`` (kept once onnxruntime reproduces PyTorch within 1e-3)
    dense INT8 ONNX             ``deploy.quantize.quantize`` of that graph (onnxruntime's dynamic quantization, the
                                settings it chooses for this CPU; kept once its output is checked against FP32)
    structured FP32 PyTorch     ``prune-structured``: 50% of the heads and 50% of the FFN neurons removed (global
                                magnitude, as bench_structured.py), not fine-tuned after (--recover-epochs N: N epochs
                                of the finetune pipeline on the same training examples)
    structured INT8 ONNX        the same, exported and quantized as above
    vocabulary cut FP32         ``deploy.vocab.prune_vocab`` to SST-2's training text (checked: kept text tokenizes
                                as before and gives equal hidden states)

Bytes: the model file (``model.safetensors``) or the ``.onnx`` file, against the dense model file. Latency:
``prunelab.measure_speed`` on --threads threads: one forward pass of each variant per round, in a new random order
every round, after warm-up rounds, random token ids and a full mask at each --shapes batch x length; medians over
--repeats rounds, each against the dense FP32 PyTorch model's median in the same run, with the identical copy's
ratio as the noise floor. Accuracy: the full SST-2 dev set (872 sentences) through
``deploy.quantize.dev_score`` (batches of 64, up to 128 tokens, ``input_ids`` and ``attention_mask``), ONNX graphs
in onnxruntime and PyTorch models behind the same call. The vocabulary cut is also compared logit for logit with
the dense model on the dev sentences whose tokens are all kept.

Goals (issue 24), each printed with PASS/FAIL and the measured value:
    dense INT8 ONNX: latency <= 0.7x dense FP32 PyTorch at batch 1, dev accuracy within 1 point
    structured INT8 ONNX: latency <= 0.35x dense FP32 PyTorch at batch 1
    vocabulary cut: model file <= 0.7x, equal logits on the dev sentences of kept tokens, dev accuracy within 0.5 point
A drop is dense FP32 PyTorch's dev accuracy minus the variant's (negative: a gain, which meets "within").

Progress goes to stderr, the results to stdout.

    python benchmarks/bench_deploy.py [--model DIR] [--threads 2] [--shapes 1x128,8x128] [--repeats 20]
        [--train-examples 2000] [--epochs 2] [--recover-epochs 0] [--save-finetuned DIR] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import transformers

import prunelab
from prunelab.artifact import DENSE_FILE, load_tokenizer
from prunelab.data.glue import get_task, load_task
from prunelab.deploy.onnx import export_onnx
from prunelab.deploy.quantize import dev_score, quantize
from prunelab.deploy.speed import NOISE_FLOOR, measure_speed
from prunelab.deploy.vocab import prune_vocab
from prunelab.errors import InputError
from prunelab.methods.structured import unit_counts
from prunelab.pipelines.finetune import FinetuneConfig, finetune
from prunelab.pipelines.prune_structured import prune_structured

GOAL_INT8, GOAL_DROP_INT8 = 0.7, 1.0  # dense INT8 ONNX: latency at batch 1, dev-accuracy points
GOAL_STRUCTURED_INT8 = 0.35  # structured INT8 ONNX: latency at batch 1
GOAL_VOCAB_BYTES, GOAL_DROP_VOCAB = 0.7, 0.5  # vocabulary cut: model file, dev-accuracy points
STARTED = time.perf_counter()


def step(text: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {text}", file=sys.stderr, flush=True)


class TorchSession:
    """A PyTorch classifier behind onnxruntime's ``run(None, feeds)``, so ``dev_score`` scores it as it scores a graph."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    def run(self, _names, feeds: dict) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(feeds["input_ids"]),
                             attention_mask=torch.from_numpy(feeds["attention_mask"]))
        return [out.logits.numpy()]


def session(path: Path, threads: int):
    if path.suffix == ".onnx":
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return TorchSession(prunelab.from_pretrained(str(path)).model)


def finetuned(args, glue: Path, root: Path) -> Path:
    """The fine-tuned classifier's directory: --model, or a fresh fine-tune of minilm."""
    if args.model:
        step(f"reusing the fine-tuned classifier {args.model}")
        return Path(args.model)
    out = Path(args.save_finetuned) if args.save_finetuned else root / "tuned"
    step(f"fine-tuning minilm on {args.train_examples} SST-2 examples, {args.epochs:g} epochs (minutes) -> {out}")
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its summary: stdout is the results'
        finetune(FinetuneConfig(model="minilm", out=str(out), task="sst2", data_dir=str(glue), lrs=[1e-4],
                                epochs=args.epochs, max_train_samples=args.train_examples, batch_size=16,
                                max_seq_len=64, save_model=True))
    return out / "model"


def logits_on_kept(dense: Path, cut: Path, glue: Path) -> tuple[int, int, int, float]:
    """The dev sentences whose tokens the cut vocabulary all keeps: how many, how many the cut tokenizer spells in the
    same tokens and the cut model gives bit-equal logits on, the dev set's size, and the largest logit difference."""
    tokenizers = load_tokenizer(str(dense)), load_tokenizer(str(cut))
    kept = set(tokenizers[1].get_vocab())
    texts = [a for a, _, _ in load_task(get_task("sst2"), glue)["dev"]]
    tokens = [tokenizers[0].convert_ids_to_tokens(ids)
              for ids in tokenizers[0](texts, add_special_tokens=False)["input_ids"]]
    chosen = [t for t, toks in zip(texts, tokens) if all(tok in kept for tok in toks)]
    models = [prunelab.from_pretrained(str(m)).model.eval() for m in (dense, cut)]
    equal, worst = 0, 0.0
    for start in range(0, len(chosen), 64):
        part = chosen[start:start + 64]
        encs = [tok(part, padding=True, truncation=True, max_length=128, return_tensors="pt") for tok in tokenizers]
        same_tokens = [a == b for a, b in zip(*([t.convert_ids_to_tokens(ids) for ids in e["input_ids"].tolist()]
                                                for t, e in zip(tokenizers, encs)))]
        with torch.no_grad():
            want, got = (m(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).logits
                         for m, e in zip(models, encs))
        worst = max(worst, float((want - got).abs().max()))
        equal += sum(s and torch.equal(a, b) for s, a, b in zip(same_tokens, want, got))
    return len(chosen), equal, len(texts), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an already fine-tuned SST-2 classifier (skips the fine-tune)")
    parser.add_argument("--save-finetuned", help="run the fine-tune in this directory and keep it (its model/ is a --model)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--recover-epochs", type=float, default=0,
                        help="fine-tune the structurally pruned model this many epochs (default 0: not at all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="1x128,8x128")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    glue = Path(args.data) / "glue"

    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as root:
        root = Path(root)
        dense = finetuned(args, glue, root)
        step("exporting the dense model to ONNX (checked in onnxruntime)")
        dense_onnx = export_onnx(str(dense), root / "dense.onnx")
        step("quantizing it to INT8 as `prunelab quantize --task sst2` does (checked against FP32 and on the dev set)")
        try:  # the CPU's recommended weights, and unsigned ones where those lose more than a point of dev accuracy
            dense_int8 = quantize(str(dense), root / "dense-int8.onnx", task="sst2", data_dir=str(glue))
        except InputError as err:
            print(f"note: {err}; the recommended settings' graph is timed instead")
            dense_int8 = quantize(dense_onnx["file"], root / "dense-int8.onnx")
        step("removing 50% of the heads and 50% of the FFN neurons (global magnitude)")
        structured = root / "structured"
        units = prune_structured(str(dense), str(structured), heads=0.5, ffn=0.5, criterion="magnitude", scope="global")
        if args.recover_epochs:
            step(f"fine-tuning the structurally pruned model {args.recover_epochs:g} epochs (minutes)")
            with contextlib.redirect_stdout(sys.stderr):
                finetune(FinetuneConfig(model=str(structured), out=str(root / "structured-tuned"), task="sst2",
                                        data_dir=str(glue), lrs=[1e-4], epochs=args.recover_epochs,
                                        max_train_samples=args.train_examples, batch_size=16, max_seq_len=64,
                                        save_model=True))
            structured = root / "structured-tuned" / "model"
        step("exporting and quantizing the structurally pruned model")
        structured_onnx = export_onnx(str(structured), root / "structured.onnx")
        structured_int8 = quantize(structured_onnx["file"], root / "structured-int8.onnx")
        step("cutting the vocabulary to SST-2's training text (checked)")
        vocab = root / "vocab"
        cut = prune_vocab(str(dense), vocab, task="sst2", data_dir=str(glue))

        variants = {  # label: (what is timed and scored, its file on disk)
            "dense FP32 PyTorch": (dense, dense / DENSE_FILE),
            "dense FP32 ONNX": (root / "dense.onnx", root / "dense.onnx"),
            "dense INT8 ONNX": (root / "dense-int8.onnx", root / "dense-int8.onnx"),
            "structured FP32 PyTorch": (structured, structured / DENSE_FILE),
            "structured INT8 ONNX": (root / "structured-int8.onnx", root / "structured-int8.onnx"),
            "vocabulary cut FP32 PyTorch": (vocab, vocab / DENSE_FILE),
        }
        step(f"scoring each variant on the SST-2 dev set ({args.threads} threads)")
        accuracy = {}
        for name, (path, _) in variants.items():
            accuracy[name] = dev_score(session(path, args.threads), str(vocab if path == vocab else dense), "sst2",
                                       str(glue))
        kept, equal, dev_size, worst = logits_on_kept(dense, vocab, glue)
        by_length: dict[int, list[int]] = {}
        for batch, length in shapes:
            by_length.setdefault(length, []).append(batch)
        label = {str(path): name for name, (path, _) in variants.items()} | {NOISE_FLOOR: "dense FP32 PyTorch, identical copy"}
        latency = {}  # (variant, batch, length) -> measure_speed's row
        for length, batches in by_length.items():
            step(f"timing at batch sizes {batches} x {length} tokens, {args.repeats} interleaved rounds")
            result = measure_speed([str(path) for path, _ in variants.values()], batch_sizes=batches, seq_len=length,
                                   threads=args.threads, repeats=args.repeats)
            latency |= {(label[r["model"]], r["batch"], length): r for r in result["rows"]}
        sizes = {name: file.stat().st_size for name, (_, file) in variants.items()}

        # -- the report ---------------------------------------------------------------------------------------
        base_bytes, base_acc = sizes["dense FP32 PyTorch"], accuracy["dense FP32 PyTorch"]
        settings = dense_int8["settings"]
        tuning = (f"--model {args.model}" if args.model else
                  f"minilm fine-tuned on {args.train_examples} SST-2 examples, {args.epochs:g} epochs, lr 1e-4, batch 16, 64 tokens")
        print(f"setup: {tuning}; threads: {args.threads} ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}); "
              f"median of {args.repeats} interleaved rounds; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
        print(f"ONNX export max abs difference to PyTorch: dense {dense_onnx['max_abs_diff']:.1e}, structured "
              f"{structured_onnx['max_abs_diff']:.1e}")
        print(f"INT8 settings: {settings['weight_type']} weights, reduce_range {settings['reduce_range']} (CPU: "
              f"{settings['cpu']}): {settings['why']}; max abs difference to FP32 on a sample batch: dense "
              f"{dense_int8['max_abs_diff']:.3f} of {dense_int8['output_scale']:.2f}, structured "
              f"{structured_int8['max_abs_diff']:.3f} of {structured_int8['output_scale']:.2f}"
              + "".join(f"; tried first for the dense model: {t['weight_type']} weights, dev {t['dev_score']:.2f}"
                        for t in dense_int8.get("tried", [])))
        print(f"structured: heads per layer {units['heads_before']} -> {units['heads_after']}; FFN width "
              f"{units['ffn_before'][0]} -> {units['ffn_after']}; "
              + (f"fine-tuned {args.recover_epochs:g} epochs after" if args.recover_epochs else
                 "not fine-tuned after (--recover-epochs 0), so its accuracy drop is large"))
        dev_cut = cut["dev"]["dev"]
        print(f"vocabulary cut: {cut['vocab_before']:,} -> {cut['vocab_after']:,} tokens; dev: {dev_cut['removed_tokens']} "
              f"of {dev_cut['tokens']:,} tokens have a removed id, in {dev_cut['examples_affected']} of "
              f"{dev_cut['examples']} sentences; unknown tokens {dev_cut['unk_before']} -> {dev_cut['unk_after']}")
        header = f"{'variant':<34} {'bytes on disk':>22}"
        for batch, length in shapes:
            header += f" {f'{batch}x{length} ms':>20}"
        print(header + f" {'dev accuracy (drop)':>20}")
        for name in [*variants, "dense FP32 PyTorch, identical copy"]:
            line = f"{name:<34} "
            line += (f"{sizes[name] / 1e6:>12.1f} MB {sizes[name] / base_bytes:>6.3f}x" if name in sizes else f"{'':>22}")
            for batch, length in shapes:
                r = latency[(name, batch, length)]
                line += f" {r['median_ms']:>12.1f} {r['ratio']:>6.3f}x"
            if name in accuracy:
                line += f" {accuracy[name]:>12.2f} ({base_acc - accuracy[name]:+.2f})"
            print(line)
        print(f"vocabulary cut, dev sentences whose tokens are all kept: {kept} of {dev_size}; same tokens and "
              f"bit-equal logits on {equal} of them (max abs logit difference {worst:.1e})")

        # -- the goals ----------------------------------------------------------------------------------------
        one = next(((b, n) for b, n in shapes if b == 1), None)

        def at_batch_one(name: str) -> tuple[float | None, str]:
            if one is None:
                return None, "batch 1 not measured (add 1xN to --shapes)"
            r = latency[(name, *one)]
            floor = latency[("dense FP32 PyTorch, identical copy", *one)]
            return r["ratio"], (f"{one[0]}x{one[1]} {r['ratio']:.3f}x dense FP32 PyTorch (paired {r['paired_ratio']:.3f}x; "
                                f"noise floor {floor['ratio']:.3f}x)")

        def goal(ok: bool, text: str) -> None:
            print(f"{'PASS' if ok else 'FAIL'} {text}")

        ratio, measured = at_batch_one("dense INT8 ONNX")
        drop = base_acc - accuracy["dense INT8 ONNX"]
        goal(ratio is not None and ratio <= GOAL_INT8 and drop <= GOAL_DROP_INT8,
             f"dense INT8 ONNX: latency <= {GOAL_INT8}x at batch 1, dev accuracy drop <= {GOAL_DROP_INT8:g} point: "
             f"{measured}; dev accuracy {accuracy['dense INT8 ONNX']:.2f} vs {base_acc:.2f} (drop {drop:+.2f})")
        ratio, measured = at_batch_one("structured INT8 ONNX")
        goal(ratio is not None and ratio <= GOAL_STRUCTURED_INT8,
             f"structured INT8 ONNX: latency <= {GOAL_STRUCTURED_INT8}x at batch 1: {measured}")
        drop = base_acc - accuracy["vocabulary cut FP32 PyTorch"]
        bytes_ratio = sizes["vocabulary cut FP32 PyTorch"] / base_bytes
        goal(bytes_ratio <= GOAL_VOCAB_BYTES and kept > 0 and equal == kept and drop <= GOAL_DROP_VOCAB,
             f"vocabulary cut: model file <= {GOAL_VOCAB_BYTES}x, equal logits where all tokens are kept, dev accuracy "
             f"drop <= {GOAL_DROP_VOCAB:g} point: file {bytes_ratio:.3f}x; logits equal on {equal} of {kept}; dev accuracy "
             f"{accuracy['vocabulary cut FP32 PyTorch']:.2f} vs {base_acc:.2f} (drop {drop:+.2f})")
        embeddings = prunelab.from_pretrained(str(dense)).model.get_input_embeddings().weight
        print(f"note: the word embeddings are {embeddings.numel() * embeddings.element_size() / base_bytes:.0%} of the "
              "dense model file; structured pruning leaves them whole, the vocabulary cut removes most of their rows")
        step("done")


if __name__ == "__main__":
    main()
