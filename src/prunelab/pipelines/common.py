"""What every training pipeline shares: its options, run directory, step budget, logs and Trainer arguments.

A run directory holds ``run_config.json`` (the resolved options, their fingerprint and the versions), ``train.log``
and what the pipeline writes. ``--resume`` continues a run only under the same fingerprint: the options that
decide its results and the identity of its model, tokenizer and data (``fingerprint``).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import logging
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..artifact import resolve_model_path
from ..config import check_number, versions  # noqa: F401 (check_number: the pipelines' import)
from ..io import check_apart, check_output_dir, mark_output, read_json, set_aside, write_json
from ..errors import InputError, OutputExistsError

logger = logging.getLogger(__name__)

CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.json"
# Options that change how a run reports, not what it computes: a resume may change them.
NOT_FINGERPRINTED = ("out", "progress", "logging_steps", "report_to", "lrs", "save_steps")


# -- processes --------------------------------------------------------------------------------------


def is_main_process() -> bool:
    """False on the non-zero ranks of a data-parallel launch (torchrun and accelerate set RANK).

    Only the main process writes run files, so ranks never race on the run directory; every rank trains.
    """
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Data-parallel processes of this launch (torchrun and accelerate set WORLD_SIZE); 1 without a launcher."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def write_json_once(path: str | os.PathLike, data: dict) -> None:
    """``io.write_json`` on the main process only."""
    if is_main_process():
        write_json(path, data)


# -- options ----------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RunOptions:
    """Options of every training pipeline: the model, the run directory, and how the HF Trainer runs.

    Attributes:
        model: A model directory, pruned artifact, hub id or alias.
        out: The run directory.
        tokenizer: Tokenizer directory, when `model` has none.
        batch_size, max_seq_len, grad_accum, seed, fp16, bf16: As in ``run_glue.py``.
        report_to: Trainer integrations, comma-separated (``none``, ``tensorboard``, ``wandb``, ...).
        logging_steps: Optimizer steps between log entries.
        progress: The Trainer's progress bars.
    """

    model: str
    out: str
    tokenizer: str | None = None
    batch_size: int = 32
    max_seq_len: int = 128
    grad_accum: int = 1
    seed: int = 42
    fp16: bool = False
    bf16: bool = False
    report_to: str = "none"
    logging_steps: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        check_number("--batch-size", self.batch_size, low=1, integer=True)
        check_number("--max-seq-len", self.max_seq_len, low=8, integer=True)
        check_number("--grad-accum", self.grad_accum, low=1, integer=True)
        check_number("--seed", self.seed, low=0, high=2**32 - 1, integer=True)
        check_number("--logging-steps", self.logging_steps, low=1, integer=True)
        if self.fp16 and self.bf16:
            raise InputError("--fp16 and --bf16 exclude each other; pass one")
        _check_report_to(self.report_to)

    def trainer_kwargs(self) -> dict:
        """The keyword arguments of ``training_arguments`` these options decide."""
        return dict(seed=self.seed, batch_size=self.batch_size, grad_accum=self.grad_accum, fp16=self.fp16,
                    bf16=self.bf16, report_to=self.report_to, logging_steps=self.logging_steps,
                    disable_tqdm=not self.progress)


def _check_report_to(report_to: str) -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [n.strip() for n in str(report_to).split(",") if n.strip()]
    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK and n not in ("none", "all")]
    if not names or unknown:
        raise InputError(f"--report-to {report_to!r}: unknown integration {unknown[0] if unknown else ''!r}; allowed: "
                         f"none, all, {', '.join(sorted(INTEGRATION_TO_CALLBACK))} (comma-separated)")


# -- the step budget --------------------------------------------------------------------------------


def optimizer_steps_per_epoch(num_examples: int, batch_size: int, grad_accum: int, ranks: int | None = None) -> int:
    """Optimizer steps the HF Trainer takes per epoch.

    Each of the `ranks` data-parallel processes (default: ``world_size()``) reads ceil(n / (batch · ranks))
    batches per epoch (accelerate evens them out), and every `grad_accum` batches, or the epoch's last few,
    make one optimizer step: ceil(batches / grad_accum), at least 1.
    """
    ranks = world_size() if ranks is None else ranks
    batches = math.ceil(num_examples / (batch_size * ranks))
    return max(1, math.ceil(batches / grad_accum))


def optimizer_steps(epochs: float, num_examples: int, batch_size: int, grad_accum: int, ranks: int | None = None) -> int:
    """Optimizer steps of `epochs` epochs: ceil(epochs · steps per epoch), as the Trainer counts them."""
    return max(1, math.ceil(epochs * optimizer_steps_per_epoch(num_examples, batch_size, grad_accum, ranks)))


# -- the run directory ------------------------------------------------------------------------------


PATH_KEYS = ("model", "tokenizer", "teacher", "data_dir", "corpus", "dev_file")


def fingerprint(options) -> dict:
    """What decides a run's results: its options (less ``NOT_FINGERPRINTED``; paths made absolute), the number of
    data-parallel ranks (the step budget counts them), and the identity of the local files it reads: model,
    tokenizer, teacher, corpus, and for a GLUE run the task's folder of the data directory."""
    config = {k: v for k, v in dataclasses.asdict(options).items() if k not in NOT_FINGERPRINTED}
    out = Path(options.out).resolve()
    files = {}
    for key in PATH_KEYS:
        value = config.get(key)
        items = value if isinstance(value, list) else [value]
        local = [resolve_model_path(str(item)) if item else item for item in items]
        local = [str(Path(item).resolve()) if item and Path(item).exists() else item for item in local]
        if key == "data_dir" and local[0] and getattr(options, "task", None):
            from ..data.glue import get_task

            local = [str(Path(local[0]) / get_task(options.task).folder)]
        config[key] = local if isinstance(value, list) else local[0]
        for i, item in enumerate(local):
            if item:
                files[f"{key}[{i}]" if isinstance(value, list) else key] = _identity(Path(item), out)
    return {"config": {**config, "world_size": world_size()}, "files": files}


def _identity(root: Path, out: Path) -> str | None:
    """A short digest of a local file or directory tree, less anything under the run directory `out` (``None`` for
    what is not local, e.g. a hub id): each file's name and size, the SHA-256 of small files, and of a large one
    (weights) its first and last MiB."""
    if not root.exists():
        return None
    digest = hashlib.sha256()
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and out not in p.resolve().parents]
    for f in sorted(files):
        size = f.stat().st_size
        digest.update(f"{f.relative_to(root.parent if root.is_file() else root)}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= 4 * 2**20:
                digest.update(fh.read())
            else:
                digest.update(fh.read(2**20))
                fh.seek(-(2**20), os.SEEK_END)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def prepare_run_dir(options, *, overwrite: bool, resume: bool) -> tuple[Path, dict | None]:
    """Create the run directory of `options` (main process) and record its config; call it once every input has
    been checked, so a refused run writes nothing.

    An existing non-empty directory needs `resume` or `overwrite`. With `resume`, the recorded fingerprint must
    equal this run's (else ``ValueError`` naming the keys that differ). In a data-parallel launch the main process
    checks and writes, and the other ranks wait for it (``on_main_process``).

    Returns:
        The directory, and the metrics of a finished run being resumed (``None`` otherwise): the caller
        returns them instead of running again.
    """
    out = Path(options.out)
    return out, on_main_process(lambda: _prepare(out, options, overwrite=overwrite, resume=resume))


def _prepare(out: Path, options, *, overwrite: bool, resume: bool) -> dict | None:
    inputs = run_inputs(options)
    check_apart(out, inputs)
    finished = None
    begun = out.is_dir() and any(out.iterdir())
    if begun and resume:
        _check_same_run(out, options)
        if (out / METRICS_FILE).is_file():
            finished = read_json(out / METRICS_FILE, "metrics file")
    elif begun and not overwrite:
        raise OutputExistsError(f"output directory {out} is not empty; pass --resume to continue that run, --overwrite "
                                "to replace it, or choose another --out")
    else:
        check_output_dir(out, overwrite, inputs)  # --overwrite replaces only prunelab's own output
    with set_aside(out) if begun and not resume else nullcontext():  # the old run goes once the new directory exists
        out.mkdir(parents=True, exist_ok=True)
        mark_output(out)
        write_json(out / CONFIG_FILE, {"config": dataclasses.asdict(options), "fingerprint": fingerprint(options),
                                        "versions": versions()})
    return finished


def run_inputs(options) -> list[str]:
    """The local paths a run reads (model, tokenizer, teacher, data directory, corpus files), aliases resolved."""
    values = [getattr(options, key, None) for key in PATH_KEYS]
    return [resolve_model_path(str(v)) for value in values for v in (value if isinstance(value, list) else [value]) if v]


def on_main_process(work):
    """``work()`` on the main process; in a data-parallel launch the other ranks wait for it, then return its result
    or raise its error, so that no rank reads what the main process is still checking, writing or deleting.

    The ranks meet in the launch's process group (created here if the Trainer has not created it yet), so the wait
    belongs to this launch: no clock or file age decides it. The result must pickle."""
    if world_size() == 1:
        return work()
    import torch.distributed as dist

    if not dist.is_initialized():  # the launcher's env:// rendezvous, which the Trainer's accelerate state then uses
        dist.init_process_group(timeout=timedelta(minutes=30))  # the Trainer's default ddp_timeout
        atexit.register(_close_process_group)  # torn down before the interpreter is: gloo can abort in its destructor
    box = [None]
    if is_main_process():
        try:
            box[0] = (True, work())
        except Exception as error:  # every rank stops with the main process's error
            box[0] = (False, error)
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    done, value = box[0]
    if not done:
        dist.barrier()  # every rank has the error before any of them leaves the group
        _close_process_group()
        raise value
    return value


def _close_process_group() -> None:
    """Destroy the default process group, if one is left (at exit, or when a launch stops on an error)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _check_same_run(out: Path, options) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{out} holds no {CONFIG_FILE}; it is not a prunelab run directory: choose another --out")
    recorded = read_json(path, "run config")
    now = fingerprint(options)
    before = recorded.get("fingerprint")
    if before is None:  # a run directory of an older prunelab: compare the options it recorded, paths aside
        now["config"] = {k: v for k, v in now["config"].items() if k not in (*PATH_KEYS, "world_size")}
        before = {"config": {k: v for k, v in recorded.get("config", {}).items()
                             if k not in (*NOT_FINGERPRINTED, *PATH_KEYS)}, "files": now["files"]}
    differ = sorted({k for part in ("config", "files") for k in set(before.get(part, {})) | set(now[part])
                     if before.get(part, {}).get(k) != now[part].get(k)})
    if differ:
        raise InputError(f"--resume: {out} holds a run with other settings or inputs ({', '.join(differ)} differ); "
                         "pass the same settings, --overwrite to start afresh, or another --out")


@contextmanager
def run_log(out: Path):
    """Send prunelab's and transformers' log records inside the block to ``<out>/train.log`` (main process)."""
    handler = logging.FileHandler(out / "train.log") if is_main_process() else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("prunelab", "transformers"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("prunelab").setLevel(logging.INFO)
    try:
        yield
    finally:
        for name in ("prunelab", "transformers"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def last_checkpoint(output_dir: Path) -> str | None:
    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


# -- data and Trainer arguments ---------------------------------------------------------------------


class ListDataset(torch.utils.data.Dataset):
    """Examples already tokenized into a list of dicts (GLUE rows, MLM blocks)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def training_arguments(output_dir: Path, *, seed: int, learning_rate: float, batch_size: int, grad_accum: int = 1,
                       fp16: bool = False, bf16: bool = False, report_to: str = "none", logging_steps: int = 50,
                       **kwargs) -> TrainingArguments:
    """TrainingArguments with prunelab's defaults; `kwargs` (epochs, max_steps, save strategy, ...) pass through."""
    return TrainingArguments(
        output_dir=str(output_dir), seed=seed, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, gradient_accumulation_steps=grad_accum, fp16=fp16, bf16=bf16,
        report_to=[] if report_to == "none" else report_to.split(","), logging_steps=logging_steps,
        save_total_limit=1, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # on a CPU-only machine, torchrun ranks need this to form DDP
        average_tokens_across_devices=False,  # else transformers 5 reports eval losses times the world size
        **kwargs,
    )
