"""Training throughput (samples/s) of `prunelab finetune` with held masks vs the same Trainer run without
prunelab, on the packaged pretrained MiniLM pruned to 50%, interleaved step by step.

Three real ``Trainer.train()`` runs go side by side in one process, each in its own thread, but a baton lets
one thread run at a time: each run takes one optimizer step, then hands over, and the order rotates every
round, so machine noise hits all runs alike. The runs: "plain Trainer"; "prunelab held masks", the same plus
prunelab's callback holding the masks (as `prunelab finetune --masks held` attaches it); and a second plain
run, whose ratio to the first is the noise floor of the measurement. All train the same pruned weights on the
same batches in the same order with the same TrainingArguments.

A step's time runs from the moment its run gets the baton to its ``on_step_end`` (after the pruning callback):
data loading, forward, backward, clipping, optimizer, scheduler and callbacks; the first steps are warm-up.
The ratio is the median over steps of the paired throughput ratio (step i is the same batch in every run).
The time prunelab itself spends per step (its gradient hooks and ``pruner.step``) is also timed directly.
Data: $PRUNELAB_DATA or ../shared/data (GLUE SST-2). Prints one line per figure, ending with the ratio.

    python benchmarks/bench_finetune.py [--steps 300] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback
from transformers.utils import logging as hf_logging

from prunelab import PruningConfig
from prunelab.artifact import load_model, prune
from prunelab.data.glue import get_task, read_split
from prunelab.integrations.hf_trainer import attach, quiet
from prunelab.pipelines.common import training_arguments
from prunelab.pipelines.finetune import FinetuneConfig, _pruner_for
from prunelab.pipelines.grid import encode

PLAIN, PRUNELAB, CONTROL = "plain Trainer", "prunelab held masks", "plain Trainer (second run: noise floor)"


class Baton:
    """Lets the named runs take one step each in turn, rotating the order every round."""

    def __init__(self, names: list[str]):
        self.names, self.done, self.round, self.position = names, set(), 0, 0
        self.condition = threading.Condition()

    def _current(self) -> str:
        start = self.round % len(self.names)
        return (self.names[start:] + self.names[:start])[self.position]

    def wait(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self._current() == name)

    def hand_over(self, name: str, finished: bool = False) -> None:
        with self.condition:
            if finished:
                self.done.add(name)
            while len(self.done) < len(self.names):
                self.position += 1
                if self.position == len(self.names):
                    self.position, self.round = 0, self.round + 1
                if self._current() not in self.done:
                    break
            self.condition.notify_all()


class StepTimer(TrainerCallback):
    """Times each step of one run while it holds the baton; added last, so the pruning callback is inside."""

    def __init__(self, name: str, baton: Baton):
        self.name, self.baton, self.times, self.start = name, baton, [], 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.baton.wait(self.name)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)
        self.baton.hand_over(self.name)
        self.baton.wait(self.name)
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.baton.hand_over(self.name, finished=True)


def time_own_work(pruner, own: list[float]) -> None:
    """Record into `own` the seconds each step spends in the pruner's gradient hooks and ``pruner.step``:
    timer hooks go on either side of the pruner's, and ``step`` is wrapped."""
    hooks: list[float] = []
    pruner.remove_hooks()
    for param in pruner._params.values():
        param.register_post_accumulate_grad_hook(lambda p: hooks.append(-time.perf_counter()))
    pruner._register_grad_hooks()
    for param in pruner._params.values():
        param.register_post_accumulate_grad_hook(lambda p: hooks.append(time.perf_counter()))
    inner = pruner.step

    def step(global_step: int) -> None:
        start = time.perf_counter()
        inner(global_step)
        own.append(time.perf_counter() - start + sum(hooks))
        hooks.clear()

    pruner.step = step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=5)
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

    own: list[float] = []  # seconds prunelab spends per step: gradient hooks and pruner.step
    baton = Baton([PLAIN, PRUNELAB, CONTROL])
    timers, trainers = {}, {}
    for name in baton.names:
        model, _ = load_model(str(pruned), model_class=AutoModelForSequenceClassification, num_labels=2)
        targs = training_arguments(work / f"run-{len(trainers)}", seed=0, learning_rate=3e-5, batch_size=args.batch,
                                   max_steps=args.steps, save_strategy="no", logging_steps=10_000, disable_tqdm=True)
        trainer = quiet(Trainer(model=model, args=targs, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer)))
        if name == PRUNELAB:
            cfg = FinetuneConfig(model=str(pruned), task="sst2", out=str(work / "unused"), batch_size=args.batch)
            pruner = _pruner_for(cfg, model, len(data))
            time_own_work(pruner, own)
            attach(trainer, pruner)
        timers[name] = StepTimer(name, baton)
        trainer.add_callback(timers[name])
        trainers[name] = trainer
    errors = []

    def train(name: str) -> None:
        try:
            trainers[name].train()
        except BaseException as err:  # hand the baton on, or the other runs would wait for this one forever
            errors.append(err)
            baton.hand_over(name, finished=True)

    threads = [threading.Thread(target=train, args=(name,)) for name in trainers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]

    base = timers[PLAIN].times[args.warmup:]
    if any(len(timer.times) != args.steps for timer in timers.values()):
        raise SystemExit(f"a run did not finish its {args.steps} steps: {[len(t.times) for t in timers.values()]}")
    print(f"setup: MiniLM-L6 pruned to 50%, SST-2, {args.steps} steps x batch {args.batch} (first {args.warmup} warm-up), "
          f"seq <= {args.seq}, 3 Trainer runs interleaved step by step")
    for name, timer in timers.items():
        times = timer.times[args.warmup:]
        speed = args.batch / statistics.median(times)
        paired = statistics.median(b / t for b, t in zip(base, times))
        print(f"training throughput {name}: {speed:.1f} samples/s vs plain Trainer {args.batch / statistics.median(base):.1f} "
              f"samples/s; median paired step ratio -> {paired:.3f}x")
    own_ms, base_ms = statistics.median(own[args.warmup:]) * 1000, statistics.median(base) * 1000
    print(f"prunelab own work per step (gradient hooks + pruner.step): {own_ms:.1f} ms vs plain step {base_ms:.1f} ms "
          f"-> {base_ms / (base_ms + own_ms):.3f}x")


if __name__ == "__main__":
    main()
