"""What every training run shares: its directory, resolved config, logs, metrics, and Trainer arguments."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import shutil

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..artifact import INFO_FILE, resolve_model_path
from ..callback import PruningCallback
from ..config import PruningConfig, dumps, versions
from ..pruner import MASKS_FILE, Pruner, load_masks

CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.json"


def is_main_process() -> bool:
    """False on the non-zero ranks of a data-parallel launch (torchrun and accelerate set RANK).

    Only the main process writes run files, so ranks never race on the run directory; every rank trains.
    """
    return int(os.environ.get("RANK", "0")) == 0


class ListDataset(torch.utils.data.Dataset):
    """Examples already tokenized into a list of dicts (GLUE rows, MLM blocks)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def prepare_run_dir(out: str | os.PathLike, *, overwrite: bool, resume: bool) -> Path:
    """Create the run directory (main process); an existing non-empty one needs `resume` or `overwrite`."""
    out = Path(out)
    if not is_main_process():
        return out
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise FileExistsError(f"output directory {out} is not empty; pass --resume to continue that run, --overwrite to replace it, or choose another --out")
    if overwrite and not resume and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write sorted JSON atomically (temporary file, then rename); main process only."""
    if not is_main_process():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(dumps(data))
    os.replace(tmp, path)


def save_run_config(out: Path, config) -> None:
    write_json(out / CONFIG_FILE, {"config": dataclasses.asdict(config), "versions": versions()})


def attach_log_file(out: Path) -> logging.Handler:
    """Send prunelab's and transformers' log records of this run to ``<out>/train.log`` (main process;
    other ranks log nowhere extra)."""
    handler = logging.FileHandler(out / "train.log") if is_main_process() else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("prunelab", "transformers"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("prunelab").setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    for name in ("prunelab", "transformers"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


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


def attach_pruner(trainer: Trainer, pruner: Pruner) -> PruningCallback:
    """Add the pruning callback first, so its log figures reach the report_to integrations too."""
    callback = PruningCallback(pruner)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def quiet(trainer: Trainer) -> Trainer:
    """No console output from `trainer` (its logs still reach log_history and train.log)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def last_checkpoint(output_dir: Path) -> str | None:
    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def saved_masks(model: str) -> tuple[dict | None, dict]:
    """Masks and pruning config saved with a pruned artifact (``None, {}`` for a plain model)."""
    path = Path(resolve_model_path(model))
    if not (path / MASKS_FILE).is_file():
        return None, {}
    info = json.loads((path / INFO_FILE).read_text()) if (path / INFO_FILE).is_file() else {}
    return load_masks(path / MASKS_FILE), info.get("config", {})


def mask_selection(model, saved_config: dict, masks: dict | None) -> dict:
    """include/exclude/layers that resolve, on `model`, to the targets an artifact's `masks` cover.

    A kind the masks do not cover at all (e.g. the pooler a classifier adds to an MLM checkpoint, freshly
    initialised) is excluded; a partial mismatch is left for the Pruner to reject.
    """
    from ..targets import resolve_targets

    selection = {k: saved_config[k] for k in ("include", "exclude", "layers") if saved_config.get(k) is not None}
    if masks:
        targets = resolve_targets(model, selection.get("include"), selection.get("exclude"), selection.get("layers"))
        uncovered = {t.kind for t in targets} - {t.kind for t in targets if t.name in masks}
        selection["exclude"] = sorted(set(selection.get("exclude", [])) | uncovered)
    return selection


def held_masks_config(model, saved_config: dict, masks: dict | None, mode: str) -> PruningConfig:
    """A constant-schedule config over the same targets as an artifact's saved masks."""
    return PruningConfig(schedule="constant", mode=mode, **mask_selection(model, saved_config, masks))
