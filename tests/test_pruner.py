import pytest
import torch

from conftest import batch, tiny_model
from prunelab import Pruner, PruningConfig
from prunelab.targets import get_parameter


def mlm_loss(model, step, model_type="bert"):
    inputs = batch(model_type, seed=step)
    return model(**inputs, labels=inputs["input_ids"]).loss


def pruned_weights_are_zero(pruner):
    return all(
        int(torch.count_nonzero(get_parameter(pruner.model, t).detach()[~pruner.masks[t.name]])) == 0
        for t in pruner.targets
    )


SETTINGS = {
    "adamw_weight_decay": dict(opt=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
    "sgd_momentum": dict(opt=lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9)),
    "grad_accumulation": dict(opt=lambda p: torch.optim.AdamW(p, lr=1e-2), accumulate=3),
    "grad_clipping": dict(opt=lambda p: torch.optim.AdamW(p, lr=1e-2), clip=0.05),
    "bf16_autocast": dict(opt=lambda p: torch.optim.AdamW(p, lr=1e-2), autocast=torch.bfloat16),
    "fp16_autocast_grad_scaler": dict(opt=lambda p: torch.optim.AdamW(p, lr=1e-2), autocast=torch.float16, scaler=True),
}


def train(model, pruner, opt, steps, *, accumulate=1, clip=None, autocast=None, scaler=False, check=None, first=1):
    grad_scaler = torch.amp.GradScaler("cpu") if scaler else None
    for step in range(first, first + steps):
        for micro in range(accumulate):
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                loss = mlm_loss(model, step * 10 + micro) / accumulate
            (grad_scaler.scale(loss) if grad_scaler else loss).backward()
        if check:
            check("grad", step)
        if clip:
            if grad_scaler:
                grad_scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if grad_scaler:
            grad_scaler.step(opt)
            grad_scaler.update()
        else:
            opt.step()
        opt.zero_grad()
        pruner.step(step)
        if check:
            check("weights", step)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("schedule", ["oneshot", "cubic"])
@pytest.mark.parametrize("attached", [False, True], ids=["rezero", "optimizer-attached"])
def test_enforced_masks_hold_through_every_optimizer_step(setting, schedule, attached):
    """Alone, the pruner re-zeroes the weights after every step; attached to the (AdamW or SGD) optimizer, it
    does not, and the cleared optimizer state at newly pruned positions must keep them at 0.0 instead."""
    model = tiny_model("bert", "mlm").train()
    cfg = PruningConfig(sparsity=0.6, schedule=schedule, end_step=12, update_every=3)
    pruner = Pruner(model, cfg)
    pruner.step(0)
    opt_kwargs = dict(SETTINGS[setting])
    opt = opt_kwargs.pop("opt")(model.parameters())
    if attached:
        pruner.attach_optimizer(opt)
        assert pruner._needs_rezero() == []  # the per-step pass is really skipped
    seen_updates = []

    def check(stage, step):
        if stage == "grad":  # gradient hooks zeroed pruned gradients before clipping / the optimizer
            for t in pruner.targets:
                param = get_parameter(model, t)
                if pruner.masks:
                    assert int(torch.count_nonzero(param.grad[~pruner.masks[t.name]])) == 0
        else:
            assert pruned_weights_are_zero(pruner), f"step {step}"
            seen_updates.append(pruner.mask_sparsity())

    train(model, pruner, opt, 20, check=check, **opt_kwargs)
    exact = sum(round(0.6 * t.numel) for t in pruner.targets)  # matrix scope rounds per target
    assert pruner.sparsity_report()["overall"]["zeros"] >= exact
    assert sum(int((~m).sum()) for m in pruner.masks.values()) == exact
    if schedule == "cubic":  # sparsity rose in steps and was held after end_step
        assert seen_updates[0] < seen_updates[5] < seen_updates[11] == seen_updates[-1]
    # kept weights did train
    assert any(bool((get_parameter(model, t).detach() != 0).any()) for t in pruner.targets)


def test_free_mode_zeroes_then_lets_weights_regrow():
    model = tiny_model("bert", "mlm").train()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, mode="free"))
    pruner.step(0)
    assert pruner.sparsity_report()["overall"]["sparsity"] >= 0.5  # information deleted at the start
    train(model, pruner, torch.optim.AdamW(model.parameters(), lr=1e-2), 5)
    assert not pruned_weights_are_zero(pruner)  # free to regrow
    assert pruner.sparsity_report()["overall"]["sparsity"] < 0.1


def test_regrow_reselects_from_all_weights():
    model = tiny_model("bert")
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="cubic", end_step=2, update_every=1, regrow=True,
                                         criterion="random", mode="free"))
    pruner.update_masks(0.5, step=0)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    pruner.config.seed = 1
    pruner.update_masks(0.3, step=1)  # lower sparsity is allowed only with regrowth
    assert pruner.mask_sparsity() == pytest.approx(0.3, abs=1e-3)
    assert any(bool((pruner.masks[n] & ~first[n]).any()) for n in first)


def test_global_scope_exact_over_all_targets():
    model = tiny_model("distilbert")
    with torch.no_grad():
        model.transformer.layer[1].ffn.lin1.weight.mul_(10)  # large weights survive a global threshold
    pruner = Pruner(model, PruningConfig(sparsity=0.7, scope="global"))
    pruner.step(0)
    total = sum(t.numel for t in pruner.targets)
    assert sum(int((~m).sum()) for m in pruner.masks.values()) == round(0.7 * total)
    lin1 = 1 - float(pruner.masks["transformer.layer.1.ffn.lin1.weight"].float().mean())
    assert lin1 < 0.1 < 0.7 < 1 - float(pruner.masks["transformer.layer.0.ffn.lin1.weight"].float().mean())


def test_realized_sparsity_mismatch_is_an_error(monkeypatch):
    model = tiny_model("bert")
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    monkeypatch.setattr(Pruner, "apply", lambda self, names=None: None)  # masks chosen but never reach the weights
    with pytest.raises(RuntimeError, match="not zero where pruned"):
        pruner.step(0)


class MixingSGD(torch.optim.SGD):
    """An optimizer whose update moves every entry (like Shampoo or Muon mixing entries): zero gradients on
    zero state do not keep a weight at zero."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.abs().mean())


def test_optimizers_that_mix_entries_are_still_rezeroed_every_step():
    model = tiny_model("bert", "mlm").train()
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    pruner.step(0)
    opt = MixingSGD(model.parameters(), lr=1e-2)
    pruner.attach_optimizer(opt)
    assert pruner._needs_rezero() == list(pruner.masks)
    train(model, pruner, opt, 3)
    assert pruned_weights_are_zero(pruner)
    # and the test is sensitive: without the re-zero this optimizer regrows pruned weights
    pruner.apply = lambda names=None, **kwargs: None
    train(model, pruner, opt, 1, first=4)
    assert not pruned_weights_are_zero(pruner)


def adam_state_at(opt, pruner, key, kept):
    """The values of `key` in the optimizer state of every target, at kept or at pruned positions."""
    return torch.cat([opt.state[pruner._params[n]][key][m if kept else ~m] for n, m in pruner.masks.items()])


def test_attaching_tidies_optimizer_state_at_pruned_positions_and_unwraps():
    model = tiny_model("bert", "mlm").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = Pruner(model, PruningConfig(sparsity=0.5, start_step=100))
    train(model, pruner, opt, 2)  # dense training: optimizer state everywhere
    pruner.update_masks(0.5, step=2)  # weights zeroed; the optimizer's moments there are not
    kept_before = adam_state_at(opt, pruner, "exp_avg_sq", kept=True).clone()

    class Wrapper:  # like accelerate's AcceleratedOptimizer
        optimizer = opt

    pruner.attach_optimizer(Wrapper())
    assert pruner.optimizer is opt
    assert int(torch.count_nonzero(adam_state_at(opt, pruner, "exp_avg", kept=False))) == 0
    assert bool((adam_state_at(opt, pruner, "exp_avg_sq", kept=False) == 1.0).all())  # not 0: see optimizer_state
    assert torch.equal(adam_state_at(opt, pruner, "exp_avg_sq", kept=True), kept_before)  # kept positions untouched
    train(model, pruner, opt, 3, first=3)
    assert pruned_weights_are_zero(pruner)
    assert int(torch.count_nonzero(adam_state_at(opt, pruner, "exp_avg", kept=False))) == 0
    pruner.attach_optimizer(None)  # detaching hands the optimizer back plain zeros
    assert int(torch.count_nonzero(adam_state_at(opt, pruner, "exp_avg_sq", kept=False))) == 0
    assert pruner._needs_rezero() == list(pruner.masks)


def test_optimizer_state_created_or_replaced_later_is_tidied():
    model = tiny_model("bert", "mlm").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    pruner.step(0)
    pruner.attach_optimizer(opt)  # no state yet: Adam creates it at its first step
    train(model, pruner, opt, 1)
    for key in ("exp_avg_sq", "max_exp_avg_sq"):
        assert bool((adam_state_at(opt, pruner, key, kept=False) == 1.0).all())
    # a state loaded from elsewhere, with moments at pruned positions, is tidied after the step that used it,
    # and the weights that step moved are re-zeroed
    dirty = opt.state_dict()
    for state in dirty["state"].values():
        state["exp_avg"] = torch.ones_like(state["exp_avg"])
    opt.load_state_dict(dirty)
    train(model, pruner, opt, 1, first=2)
    assert pruned_weights_are_zero(pruner)
    assert int(torch.count_nonzero(adam_state_at(opt, pruner, "exp_avg", kept=False))) == 0
    train(model, pruner, opt, 2, first=3)
    assert pruned_weights_are_zero(pruner)


def test_optimizer_attached_before_the_first_masks():
    model = tiny_model("bert", "mlm").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = Pruner(model, PruningConfig(sparsity=0.5, start_step=3))  # dense until step 3, as after fine-tuning
    pruner.step(0)
    pruner.attach_optimizer(opt)
    train(model, pruner, opt, 6)
    assert pruner.mask_sparsity() == pytest.approx(0.5, abs=1e-3) and pruned_weights_are_zero(pruner)
    assert int(torch.count_nonzero(adam_state_at(opt, pruner, "exp_avg", kept=False))) == 0


def test_second_moments_are_refilled_before_beta2_decays_them():
    from prunelab.optimizer_state import refill_interval

    model = tiny_model("bert", "mlm").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.5))
    assert refill_interval(opt) == 9  # 0.5**10 < 1e-3 <= 0.5**9
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    pruner.step(0)
    pruner.attach_optimizer(opt)
    lowest = []
    for step in range(1, 31):
        train(model, pruner, opt, 1, first=step)
        lowest.append(float(adam_state_at(opt, pruner, "exp_avg_sq", kept=False).min()))
    assert min(lowest) >= 1e-3 and lowest[0] == 1.0  # without refills: 0.5**29, a denormal away from 0
    assert pruned_weights_are_zero(pruner)


def test_regrown_positions_restart_with_zero_second_moments():
    model = tiny_model("bert", "mlm").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = Pruner(model, PruningConfig(sparsity=0.5, regrow=True, criterion="random"))
    pruner.step(0)
    pruner.attach_optimizer(opt)
    train(model, pruner, opt, 2)
    before = {n: m.clone() for n, m in pruner.masks.items()}
    pruner.config.seed = 1
    pruner.update_masks(0.5, step=2)  # another random half: some pruned positions are kept now
    name = next(iter(before))
    regrown = pruner.masks[name] & ~before[name]
    assert bool(regrown.any())
    assert int(torch.count_nonzero(opt.state[pruner._params[name]]["exp_avg_sq"][regrown])) == 0
    assert bool((opt.state[pruner._params[name]]["exp_avg_sq"][~pruner.masks[name]] == 1.0).all())
    train(model, pruner, opt, 2, first=3)
    assert pruned_weights_are_zero(pruner)


def test_replaced_parameter_is_rebound_not_silently_missed():
    model = tiny_model("bert").train()
    pruner = Pruner(model, PruningConfig(sparsity=0.5))
    pruner.step(0)
    query = model.encoder.layer[0].attention.self.query
    query.weight = torch.nn.Parameter(torch.randn_like(query.weight))
    pruner.step(1)
    assert float((query.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    model(**batch()).last_hidden_state.sum().backward()
    name = "encoder.layer.0.attention.self.query.weight"
    assert int(torch.count_nonzero(query.weight.grad[~pruner.masks[name]])) == 0


def test_constant_schedule_holds_given_or_existing_zeros():
    model = tiny_model("bert", "mlm").train()
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[:, :5] = 0
    pruner = Pruner(model, PruningConfig(schedule="constant"))
    pruner.step(0)
    name = "encoder.layer.0.output.dense.weight"
    assert int((~pruner.masks[name]).sum()) == 32 * 5
    train(model, pruner, torch.optim.AdamW(model.parameters(), lr=1e-2), 3)
    assert bool((model.bert.encoder.layer[0].output.dense.weight[:, :5] == 0).all())


def test_state_save_load_resume_continues_exactly(tmp_path):
    cfg = PruningConfig(sparsity=0.8, schedule="cubic", end_step=20, update_every=4)

    def run(steps, model=None, pruner=None, opt=None, first=1):
        model = model or tiny_model("bert", "mlm").eval()  # eval: no dropout, so runs are comparable
        pruner = pruner or Pruner(model, cfg)
        opt = opt or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if first == 1:
            pruner.step(0)
        train(model, pruner, opt, steps, first=first)
        return model, pruner, opt

    full_model, full_pruner, _ = run(30)

    model, pruner, opt = run(10)
    pruner.save(tmp_path / "ckpt")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt" / "train.pt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"masks.safetensors", "pruner_state.json"}

    saved = torch.load(tmp_path / "ckpt" / "train.pt", weights_only=True)
    resumed_model = tiny_model("bert", "mlm", seed=99).eval()
    resumed_model.load_state_dict(saved["model"])
    resumed_pruner = Pruner(resumed_model, PruningConfig())  # config comes back from the state
    resumed_pruner.load(tmp_path / "ckpt")
    assert resumed_pruner.config == cfg and resumed_pruner.last_update_step == 8
    opt = torch.optim.SGD(resumed_model.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(saved["opt"])
    run(20, resumed_model, resumed_pruner, opt, first=11)

    assert all(torch.equal(full_pruner.masks[n], resumed_pruner.masks[n]) for n in full_pruner.masks)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_masks_from_another_architecture_are_rejected():
    bert = Pruner(tiny_model("bert"), PruningConfig(sparsity=0.5))
    bert.step(0)
    with pytest.raises(ValueError, match="masks do not match the model's targets"):
        Pruner(tiny_model("distilbert"), PruningConfig(), masks=bert.masks)


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 2}, "sparsity 2 is outside"),
    ({"schedule": "cubic", "start_step": 10, "end_step": 10}, "end_step 10 must be greater than start_step 10"),
    ({"mode": "held"}, "unknown mode 'held'; allowed: enforced, free"),
    ({"update_every": 0}, "update_every 0 must be >= 1"),
    ({"schedule": "cubic", "initial_sparsity": 0.6, "sparsity": 0.5}, "must not decrease"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_config_strict_loading():
    with pytest.raises(ValueError, match="unknown key 'amount' in cfg.json"):
        PruningConfig.from_dict({"amount": 0.5}, "cfg.json")
    cfg = PruningConfig(sparsity=0.3, exclude="pooler,embeddings")
    assert PruningConfig.from_dict(cfg.to_dict()) == cfg and cfg.exclude == ["embeddings", "pooler"]


def test_metrics_are_namespaced():
    pruner = Pruner(tiny_model("bert"), PruningConfig(sparsity=0.25))
    pruner.step(0)
    figures = pruner.metrics(per_target=True)
    assert figures["pruning/sparsity"] == pytest.approx(0.25, abs=1e-3)
    assert figures["pruning/sparsity/encoder.layer.1.output.dense.weight"] == pytest.approx(0.25, abs=1e-2)


def test_loading_a_state_takes_its_target_selection(tmp_path):
    saved = Pruner(tiny_model("bert"), PruningConfig(sparsity=0.5, include=["ffn_in", "ffn_out"]))
    saved.step(0)
    saved.save(tmp_path / "state")
    model = tiny_model("bert")
    other = Pruner(model, PruningConfig())  # built for all targets
    other.load(tmp_path / "state")
    assert {t.kind for t in other.targets} == {"ffn_in", "ffn_out"} and len(other.masks) == 4
    assert float((model.encoder.layer[0].intermediate.dense.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert int((model.encoder.layer[0].attention.self.query.weight == 0).sum()) == 0
