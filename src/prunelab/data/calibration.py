"""Calibration data for one-shot criteria (Wanda, SparseGPT): a few sequences the model reads, as padded batches.

From a GLUE task's training sentences (``--calibration TASK``, from ``--data-dir`` or the hub), one sequence per
example (a sentence or a pair), or from text files (``--calibration-corpus FILES``), blocks of ``max_seq_len``
tokens (as pre-training reads them). The first `samples` sequences in a fixed shuffled order (``seed``) are taken;
fewer than asked is an error, as is none. Padding is marked by the attention mask, which the criteria read to keep
padding out of their statistics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import InputError
from .corpus import read_corpus, to_blocks
from .glue import get_task, read_hub_split, read_split

SAMPLES = 128


@dataclass(frozen=True)
class Calibration:
    """Where calibration sequences come from. Exactly one of `task` (with `data_dir`, or the hub) or `corpus`."""

    task: str | None = None
    data_dir: str | None = None
    corpus: tuple[str, ...] = ()
    samples: int = SAMPLES
    max_seq_len: int = 128
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.task is None) == (not self.corpus):
            raise InputError("calibration takes either a GLUE task (--calibration TASK, with --data-dir or from the hub) "
                             "or text files (--calibration-corpus FILES); give one")
        for flag, value, low in (("--calibration-samples", self.samples, 1), ("--max-seq-len", self.max_seq_len, 8),
                                 ("--batch-size", self.batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{flag} {value!r} must be a whole number >= {low}")
        if self.task is not None:
            get_task(self.task)  # an unknown task names the known ones

    def describe(self) -> dict:
        return {"source": f"GLUE {get_task(self.task).name}" if self.task else "corpus", "task": self.task,
                "data_dir": self.data_dir, "corpus": list(self.corpus), "samples": self.samples,
                "max_seq_len": self.max_seq_len, "seed": self.seed}


def calibration_batches(calibration: Calibration, tokenizer) -> list[dict[str, torch.Tensor]]:
    """`calibration.samples` sequences tokenized with `tokenizer`, in batches of input ids and attention masks."""
    if tokenizer is None:
        raise InputError("calibration needs the model's tokenizer; pass a model directory that has its tokenizer files")
    order = random.Random(calibration.seed)
    if calibration.task is not None:
        task = get_task(calibration.task)
        examples = (read_split(calibration.data_dir, task, "train") if calibration.data_dir else
                    read_hub_split(task, "train"))
        texts = [(a, b) for a, b, _ in examples]
        what = f"the training split of {task.name}"
    else:
        blocks = to_blocks(read_corpus(list(calibration.corpus)), tokenizer, calibration.max_seq_len)
        texts = blocks
        what = f"{', '.join(calibration.corpus)} ({calibration.max_seq_len}-token blocks)"
    if len(texts) < calibration.samples:
        raise InputError(f"calibration asks for {calibration.samples} sequences but {what} gives {len(texts)}; "
                         "lower --calibration-samples or give more data")
    chosen = order.sample(range(len(texts)), calibration.samples)
    batches = []
    for start in range(0, len(chosen), calibration.batch_size):
        part = [texts[i] for i in chosen[start:start + calibration.batch_size]]
        if calibration.task is not None:
            firsts, seconds = [a for a, _ in part], [b for _, b in part]
            encoded = tokenizer(firsts, seconds if any(s is not None for s in seconds) else None, padding=True,
                                truncation=True, max_length=calibration.max_seq_len, return_tensors="pt")
        else:
            encoded = tokenizer.pad({"input_ids": part}, return_tensors="pt")
        batches.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                        **({"token_type_ids": encoded["token_type_ids"]} if "token_type_ids" in encoded else {})})
    return batches
