"""Training throughput (samples/s) of `prunelab finetune` with held masks vs the same Trainer run without
prunelab, on the packaged pretrained MiniLM pruned to 50%, rounds interleaved so noise hits both alike.

Both runs train the same pruned weights on the same SST-2 subsample with the same TrainingArguments; the
only difference is prunelab's callback holding the masks (gradient hooks + re-zeroing every step).
Data: $PRUNELAB_DATA or ../shared/data (GLUE SST-2). Prints one line per figure, ending with the ratio.

    python benchmarks/bench_finetune.py [--rounds 3] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer
from transformers.utils import logging as hf_logging

from prunelab import PruningConfig
from prunelab.artifact import load_model, prune
from prunelab.glue import get_task, read_split
from prunelab.training.finetune import FinetuneConfig, _pruner_for, encode
from prunelab.training.run import attach_pruner, quiet, training_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--data", default=os.environ.get("PRUNELAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    task = get_task("sst2")
    rows = read_split(Path(args.data) / "glue", task, "train")[: args.steps * args.batch]
    work = Path(tempfile.mkdtemp())
    pruned = work / "minilm-50"
    prune("minilm", PruningConfig(sparsity=0.5), pruned)
    _, tokenizer = load_model(str(pruned))
    data = encode(rows, tokenizer, args.seq, regression=False)

    def run(with_prunelab: bool) -> float:
        model, _ = load_model(str(pruned), model_class=AutoModelForSequenceClassification, num_labels=2)
        targs = training_arguments(work / "ckpt", seed=0, learning_rate=3e-5, batch_size=args.batch, max_steps=args.steps,
                                   save_strategy="no", logging_steps=10_000, disable_tqdm=True)
        trainer = quiet(Trainer(model=model, args=targs, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer)))
        if with_prunelab:
            cfg = FinetuneConfig(model=str(pruned), task="sst2", out=str(work / "unused"), batch_size=args.batch)
            attach_pruner(trainer, _pruner_for(cfg, model, len(data)))
        return trainer.train().metrics["train_samples_per_second"]

    speeds: dict[str, list[float]] = {"plain Trainer": [], "prunelab held masks": []}
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        for with_prunelab in order:
            speeds["prunelab held masks" if with_prunelab else "plain Trainer"].append(run(with_prunelab))
    base = statistics.median(speeds["plain Trainer"])
    print(f"setup: MiniLM-L6 pruned to 50%, SST-2, {args.steps} steps x batch {args.batch}, seq <= {args.seq}, {args.rounds} rounds interleaved")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"training throughput {name}: {median:.1f} samples/s vs plain Trainer {base:.1f} samples/s -> {median / base:.3f}x")


if __name__ == "__main__":
    main()
