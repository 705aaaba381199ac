import pytest
import torch
from transformers import Trainer, TrainingArguments

from conftest import batch, tiny_model
from prunelab import Pruner, PruningConfig
from prunelab.integrations.hf_trainer import PruningCallback
from prunelab.targets import get_parameter


class TinyMLM(torch.utils.data.Dataset):
    def __len__(self):
        return 48

    def __getitem__(self, i):
        row = {k: v[0] for k, v in batch(size=1, seed=i).items()}
        return {**row, "labels": row["input_ids"].clone()}


def make_trainer(tmp_path, model, pruner, max_steps=12, **kwargs):
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=5e-3,
        weight_decay=0.01, save_steps=6, logging_steps=2, report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, **kwargs,
    )
    return Trainer(model=model, args=args, train_dataset=TinyMLM(), callbacks=[PruningCallback(pruner)])


CUBIC = PruningConfig(sparsity=0.7, schedule="cubic", start_step=0, end_step=8, update_every=2)


def test_trainer_prunes_on_schedule_and_holds_masks(tmp_path):
    model = tiny_model("bert", "mlm")
    pruner = Pruner(model, CUBIC)
    trainer = make_trainer(tmp_path, model, pruner, max_grad_norm=0.5, gradient_accumulation_steps=2)
    trainer.train()
    assert pruner.last_update_step == 8
    assert pruner.mask_sparsity() == pytest.approx(0.7, abs=1e-3)
    for t in pruner.targets:
        assert int(torch.count_nonzero(get_parameter(model, t).detach()[~pruner.masks[t.name]])) == 0
    logged = [entry["pruning/sparsity"] for entry in trainer.state.log_history if "pruning/sparsity" in entry]
    assert logged[0] < logged[2] < logged[-1] == pytest.approx(0.7, abs=1e-3)
    checkpoint = tmp_path / "run" / "checkpoint-6"
    assert (checkpoint / "masks.safetensors").is_file() and (checkpoint / "pruner_state.json").is_file()


def test_resume_from_checkpoint_continues_the_schedule(tmp_path):
    full_model = tiny_model("bert", "mlm")
    full = Pruner(full_model, CUBIC)
    make_trainer(tmp_path / "a", full_model, full).train()

    # run b: a first run leaves checkpoint-6; a fresh model and pruner resume from it to step 12
    partial_model = tiny_model("bert", "mlm")
    make_trainer(tmp_path / "b", partial_model, Pruner(partial_model, CUBIC), max_steps=12).train()
    resumed_model = tiny_model("bert", "mlm", seed=5)  # different init: everything must come from the checkpoint
    resumed = Pruner(resumed_model, PruningConfig())  # config too
    make_trainer(tmp_path / "b", resumed_model, resumed).train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-6"))

    assert resumed.config == CUBIC and resumed.last_update_step == 8
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_resume_without_pruner_state_is_a_clear_error(tmp_path):
    model = tiny_model("bert", "mlm")
    trainer = make_trainer(tmp_path, model, Pruner(model, CUBIC))
    trainer.train()
    for f in (tmp_path / "run" / "checkpoint-6").glob("pruner_state.json"):
        f.unlink()
    model = tiny_model("bert", "mlm")
    with pytest.raises(FileNotFoundError, match="holds no pruner state"):
        make_trainer(tmp_path, model, Pruner(model, CUBIC)).train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-6"))


def test_trainer_optimizer_is_attached_and_held_zeros_are_checked_at_save(tmp_path):
    """Under the Trainer the pruner relies on AdamW to keep zeros (no per-step re-zero); a pruned weight that
    becomes nonzero anyway is an error at the next checkpoint, never a silently saved regrown weight."""
    from transformers import TrainerCallback

    model = tiny_model("bert", "mlm")
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    rezeroed = []

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            rezeroed.append(pruner._needs_rezero())

    trainer = make_trainer(tmp_path / "a", model, pruner)
    trainer.add_callback(Spy())
    trainer.train()
    assert len(rezeroed) == 12 and all(names == [] for names in rezeroed)
    assert pruner.optimizer is None  # released at the end of training

    model = tiny_model("bert", "mlm")
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    name = "encoder.layer.0.output.dense.weight"

    class Regrow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                with torch.no_grad():
                    model.bert.get_parameter(name)[~pruner.masks[name]] = 1.0

    trainer = make_trainer(tmp_path / "b", model, pruner)
    trainer.add_callback(Regrow())
    with pytest.raises(RuntimeError, match="not zero where pruned"):
        trainer.train()
    assert not (tmp_path / "b" / "run" / "checkpoint-6" / "pruner_state.json").exists()


def _tensorboard_scalars(run_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in run_dir.rglob("events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    return tags


def test_attach_sends_pruning_figures_to_tensorboard(tmp_path):
    """The README's recipe: ``attach(trainer, pruner)`` puts the callback before the report_to integrations, so the
    event file a Trainer run writes holds ``pruning/sparsity``; a callback passed in ``callbacks=[...]`` runs after
    TensorBoard's and its figures reach only ``log_history``."""
    pytest.importorskip("tensorboard")
    from prunelab import attach

    for how in ("attach", "callbacks"):
        model = tiny_model("bert", "mlm")
        pruner = Pruner(model, CUBIC)
        args = TrainingArguments(output_dir=str(tmp_path / how), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                                 report_to=["tensorboard"], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                                 save_strategy="no")
        callbacks = [PruningCallback(pruner)] if how == "callbacks" else None
        trainer = Trainer(model=model, args=args, train_dataset=TinyMLM(), callbacks=callbacks)
        if how == "attach":
            assert isinstance(attach(trainer, pruner), PruningCallback)
        trainer.train()
        assert any("pruning/sparsity" in entry for entry in trainer.state.log_history)
        scalars = _tensorboard_scalars(tmp_path / how)
        assert "train/loss" in scalars
        assert ("train/pruning/sparsity" in scalars) == (how == "attach"), (how, scalars)
