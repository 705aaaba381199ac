import copy
import json
import math

import pytest
import torch
import transformers
from safetensors.torch import load_file

from conftest import CONFIGS
from glue_fixtures import glue_dir, save_tiny  # noqa: F401 (fixture)
from prunelab import load_masks
from prunelab.cli import main
from prunelab.data.glue import get_task
from prunelab.methods.kd_losses import DistillWeights, attention_loss, distill_terms, hidden_loss, layer_map, logits_loss, total_loss
from prunelab.pipelines import distill_prune as training_distill
from prunelab.pipelines.distill_prune import DistillConfig, _DistillTrainer, distill_prune
from prunelab.pipelines.common import training_arguments

FAST = dict(lrs=[1e-3], epochs=2, batch_size=4, max_seq_len=16, logging_steps=1, prune_every=2, progress=False)


def save_teacher(path, student, layers=2, num_labels=2):
    """A tiny dense BERT classifier with the student's tokenizer, as `prunelab finetune --save-model` writes one."""
    config = CONFIGS["bert"]()
    config.num_hidden_layers, config.num_labels = layers, num_labels
    torch.manual_seed(1)
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(student).save_pretrained(path)
    return path


# -- loss terms ---------------------------------------------------------------------------------------


def test_attention_loss_by_hand_and_padding_does_not_count():
    student = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (batch 1, heads 1, seq 2, seq 2)
    teacher = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert attention_loss([student], [teacher]).item() == pytest.approx((0.25 + 0.25 + 0 + 0) / 4)
    # token 2 is padding: only the (query 1, key 1) entry counts
    assert attention_loss([student], [teacher], torch.tensor([[1, 0]])).item() == pytest.approx(0.25)
    assert attention_loss([student, student], [teacher, teacher]).item() == pytest.approx(2 * 0.125)  # summed over layers
    with pytest.raises(ValueError, match="1 student and 2 teacher attention tensors"):
        attention_loss([student], [teacher, teacher])


def test_hidden_loss_by_hand_and_sizes_must_match():
    student = torch.zeros(1, 2, 2)  # (batch, seq, hidden)
    teacher = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])
    assert hidden_loss([student], [teacher]).item() == pytest.approx((1 + 1 + 9 + 9) / 4)
    assert hidden_loss([student], [teacher], torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="student hidden size 2 != teacher hidden size 3"):
        hidden_loss([student], [torch.zeros(1, 2, 3)])


def test_logits_loss_by_hand_with_temperature_2():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    p = [math.exp(math.log(3.0) / 2), 1.0]
    p = [x / sum(p) for x in p]  # softmax(teacher / 2); the student's is (0.5, 0.5)
    expected = 4 * sum(pi * math.log(pi / 0.5) for pi in p)  # T^2 * KL(teacher || student)
    assert logits_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert logits_loss(teacher, teacher, temperature=2.0).item() == 0.0
    # same gradient as the paper's soft cross-entropy -sum p_t log p_s (they differ by the teacher's entropy)
    z = torch.tensor([[0.3, -1.2]], requires_grad=True)
    logits_loss(z, teacher, temperature=2.0).backward()
    kl_grad, z.grad = z.grad.clone(), None
    (-(torch.softmax(teacher / 2, -1) * torch.log_softmax(z / 2, -1)).sum() * 4).backward()
    assert torch.allclose(kl_grad, z.grad)


def test_logits_loss_regression_is_mse_of_the_predictions():
    student, teacher = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]])
    assert logits_loss(student, teacher, temperature=5.0, regression=True).item() == pytest.approx((1 + 4) / 2)


@pytest.mark.parametrize("student, teacher, expected", [
    (6, 12, [1, 3, 5, 7, 9, 11]), (12, 12, list(range(12))), (4, 6, [0, 2, 3, 5]), (1, 3, [2]),
])
def test_layer_map_is_uniform_and_ends_on_the_last_layer(student, teacher, expected):
    assert layer_map(student, teacher) == expected


def test_layer_map_rejects_a_deeper_student():
    with pytest.raises(ValueError, match="the student has 13 layers, the teacher only 12"):
        layer_map(13, 12)


def test_weights_are_validated():
    with pytest.raises(ValueError, match="--alpha-hidden -1 must be a number >= 0"):
        DistillWeights(hidden=-1)
    with pytest.raises(ValueError, match="all loss weights are 0"):
        DistillWeights(0, 0, 0, 0)
    terms = {"attention": torch.tensor(1.0), "hidden": torch.tensor(2.0), "logits": torch.tensor(3.0)}
    assert total_loss(terms, DistillWeights(1, 0.5, 2, 4), hard=torch.tensor(10.0)).item() == 1 + 1 + 6 + 40


def test_teacher_equal_to_student_gives_exactly_zero_and_a_different_student_does_not():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(CONFIGS["bert"]()).eval()
    model.set_attn_implementation("eager")
    ids = torch.randint(5, 64, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    flags = dict(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    weights = DistillWeights()
    with torch.no_grad():
        out = model(**flags)
        terms = distill_terms(out, model(**flags), mask, weights, temperature=2.0)
        assert set(terms) == {"attention", "hidden", "logits"}
        assert all(value.item() == 0.0 for value in terms.values()), terms
        other = copy.deepcopy(model)
        other.bert.encoder.layer[1].output.dense.weight.mul_(0.5)  # the last layer, the logits and hidden states move
        other.bert.encoder.layer[0].attention.self.query.weight.mul_(0.5)  # the attention moves too
        moved = distill_terms(other(**flags), out, mask, weights, temperature=2.0)
    assert all(value.item() > 0 for value in moved.values()), moved


def test_trainer_loss_is_the_distillation_loss_in_training_and_the_task_loss_in_evaluation(tmp_path):
    config = CONFIGS["bert"]()
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0  # train mode computes what eval mode does
    torch.manual_seed(0)
    student = transformers.BertForSequenceClassification(config)
    student.set_attn_implementation("eager")
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    args = training_arguments(tmp_path, seed=0, learning_rate=1e-3, batch_size=2)
    trainer = _DistillTrainer(model=student, args=args, teacher=teacher, weights=DistillWeights(hard=0.5), temperature=2.0)
    inputs = {"input_ids": torch.randint(5, 64, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
              "labels": torch.tensor([0, 1])}
    task_loss = student(**inputs).loss.item()
    student.train()
    assert trainer.compute_loss(student, inputs).item() == pytest.approx(0.5 * task_loss)  # teacher == student: terms 0
    assert all(float(v) == 0.0 for k, v in trainer._term_sums.items() if k != "hard") and len(trainer._term_sums) == 4
    student.eval()
    assert trainer.compute_loss(student, inputs).item() == pytest.approx(task_loss)
    assert trainer._term_batches == 1  # evaluation adds no distillation terms


# -- training -----------------------------------------------------------------------------------------


def test_distill_prune_reaches_the_exact_sparsity_and_leaves_the_teacher_alone(tmp_path, glue_dir, monkeypatch):  # noqa: F811
    student = save_tiny(tmp_path / "student")
    teacher_dir = save_teacher(tmp_path / "teacher", student)
    loaded = {}
    real_load_teacher = training_distill._load_teacher

    def spy(*args, **kwargs):
        loaded["teacher"], mapping = real_load_teacher(*args, **kwargs)
        loaded["before"] = {k: v.clone() for k, v in loaded["teacher"].state_dict().items()}
        return loaded["teacher"], mapping

    monkeypatch.setattr(training_distill, "_load_teacher", spy)
    cfg = DistillConfig(model=str(student), teacher=str(teacher_dir), task="sst2", out=str(tmp_path / "kd"), data_dir=str(glue_dir),
                        sparsity=0.6, prune_end=0.5, grad_accum=2, save_model=True, **FAST)
    metrics = distill_prune(cfg)

    out = tmp_path / "kd"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert {"task", "best_lr", "dev", "dev_score", "train_loss_full", "sparsity", "runs", "seconds", "versions",
            "seconds_per_step", "teacher_share", "peak_memory_mb", "peak_memory_of", "layer_map"} <= set(metrics)
    assert metrics["layer_map"] == [0, 1] and metrics["runs"][0]["steps"] == 4  # 16 examples / (4 x 2) x 2 epochs
    assert 0 < metrics["teacher_share"] < 1 and metrics["seconds_per_step"] > 0 and metrics["peak_memory_mb"] > 0
    masks = load_masks(out / "model" / "masks.safetensors")
    pruned = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")
    for name, mask in masks.items():
        weight = pruned.bert.get_parameter(name)
        assert int((weight == 0).sum()) == int((~mask).sum()) == round(0.6 * mask.numel()), name
    assert metrics["sparsity"] == pytest.approx(0.6, abs=1e-3)

    teacher = loaded["teacher"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, loaded["before"][k]) for k, v in teacher.state_dict().items())
    on_disk = load_file(str(teacher_dir / "model.safetensors"))
    assert all(torch.equal(v, loaded["before"][k]) for k, v in on_disk.items())

    history = json.loads((out / "lr-0.001" / "log_history.json").read_text())["log_history"]
    logs = [e for e in history if "distill/attention" in e]
    assert len(logs) == 4
    for e in logs:  # alpha_hard 0: the loss is the three terms' sum, divided by grad_accum exactly once
        assert e["loss"] == pytest.approx(e["distill/attention"] + e["distill/hidden"] + e["distill/logits"], rel=1e-4)
        assert e["distill/logits"] > 0 and e["distill/hidden"] > 0 and e["distill/hard"] > 0
    assert logs[-1]["pruning/sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_baseline_without_teacher_prunes_on_the_same_budget(tmp_path, glue_dir, capsys):  # noqa: F811
    code = main(["distill-prune", str(save_tiny(tmp_path / "student")), "--teacher", "none", "--task", "mrpc",
                 "--data-dir", str(glue_dir), "--sparsity", "0.5", "--lr", "1e-3", "--epochs", "2", "--batch-size", "4",
                 "--max-seq-len", "16", "--logging-steps", "1", "--out", str(tmp_path / "base")])
    assert code == 0 and "(magnitude pruning, task loss only)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert metrics["teacher"] is None and metrics["layer_map"] is None and metrics["teacher_share"] == 0.0
    assert metrics["runs"][0]["steps"] == 8 and metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    history = json.loads((tmp_path / "base" / "lr-0.001" / "log_history.json").read_text())["log_history"]
    assert not any(k.startswith("distill/") for e in history for k in e)
    assert [e["pruning/sparsity"] for e in history if "pruning/sparsity" in e][-1] == pytest.approx(0.5, abs=1e-3)


def test_prune_start_trains_dense_first_then_reaches_the_sparsity_by_prune_end(tmp_path, glue_dir, capsys):  # noqa: F811
    code = main(["distill-prune", str(save_tiny(tmp_path / "student")), "--teacher", "none", "--task", "mrpc",
                 "--data-dir", str(glue_dir), "--sparsity", "0.5", "--lr", "1e-3", "--epochs", "2", "--batch-size", "4",
                 "--max-seq-len", "16", "--logging-steps", "1", "--prune-start", "0.5", "--prune-end", "0.75",
                 "--prune-every", "1", "--out", str(tmp_path / "late")])
    assert code == 0
    history = json.loads((tmp_path / "late" / "lr-0.001" / "log_history.json").read_text())["log_history"]
    sparsity = {e["step"]: e["pruning/sparsity"] for e in history if "loss" in e}
    assert [sparsity[s] for s in range(1, 5)] == [0.0] * 4  # 8 steps: dense through step 4
    assert 0 < sparsity[5] < 0.5 and sparsity[6] == sparsity[8] == pytest.approx(0.5, abs=1e-3)


def test_cli_with_a_deeper_teacher_on_a_regression_task(tmp_path, glue_dir, capsys):  # noqa: F811
    student = save_tiny(tmp_path / "student")
    teacher = save_teacher(tmp_path / "teacher", student, layers=4, num_labels=1)
    code = main(["distill-prune", str(student), "--teacher", str(teacher), "--task", "STS-B", "--data-dir", str(glue_dir),
                 "--sparsity", "0.7", "--temperature", "2", "--alpha-hard", "0.5", "--lr", "1e-3", "--epochs", "1",
                 "--batch-size", "4", "--max-seq-len", "16", "--prune-every", "1", "--out", str(tmp_path / "kd")])
    summary = capsys.readouterr().out
    assert code == 0 and "stsb (knowledge-aware sparse pruning, magnitude)" in summary and "sparsity 70.0" in summary and "s/step" in summary
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["layer_map"] == [1, 3] and metrics["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert set(metrics["dev"]["dev"]) == {*get_task("stsb").metrics, "score", "loss"}


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, glue_dir, capsys):  # noqa: F811
    student = save_tiny(tmp_path / "student")
    teacher = save_teacher(tmp_path / "teacher", student)
    three_labels = save_teacher(tmp_path / "three", student, num_labels=3)
    shallow = save_teacher(tmp_path / "shallow", student, layers=1)
    mlm = save_tiny(tmp_path / "mlm")
    other_vocab = save_teacher(tmp_path / "other-vocab", student)
    (other_vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"v{i}" for i in range(59)]]) + "\n")
    transformers.BertTokenizerFast(vocab=str(other_vocab / "vocab.txt")).save_pretrained(other_vocab)
    bad = [
        (["--teacher", str(teacher), "--sparsity", "1.5"], "sparsity 1.5 is outside [0, 1]"),
        (["--teacher", str(tmp_path / "nowhere")], "is not a directory; pass a dense classifier fine-tuned on sst2"),
        (["--teacher", str(three_labels)], "has 3 labels, sst2 has 2; pass a teacher fine-tuned on sst2"),
        (["--teacher", str(shallow)], "the student has 2 layers, the teacher only 1"),
        (["--teacher", str(mlm)], "is a BertForMaskedLM, not a sequence classifier"),
        (["--teacher", str(other_vocab)], "has another vocabulary than the student"),
        (["--teacher", str(teacher), "--temperature", "0"], "--temperature 0.0 must be > 0"),
        (["--teacher", str(teacher), "--prune-end", "1.5"], "--prune-end 1.5 must be in (0, 1]"),
        (["--teacher", str(teacher), "--prune-start", "0.7"], "--prune-start 0.7 must be in [0, --prune-end 0.7)"),
        (["--teacher", str(teacher), "--alpha-logits", "-1"], "--alpha-logits -1.0 must be a number >= 0"),
    ]
    for args, message in bad:
        code = main(["distill-prune", str(student), "--task", "sst2", "--data-dir", str(glue_dir), "--out", str(tmp_path / "bad"), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "bad").exists()  # every check runs before the run directory is made


def test_peak_memory_is_the_process_own_not_its_parents(tmp_path):
    """A run started by subprocess or Ray reports its own peak: getrusage's ru_maxrss would carry the parent's."""
    import subprocess
    import sys

    ballast = bytearray(600 * 2**20)
    ballast[:: 4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch each page: the parent's peak is 600 MB higher
    child = subprocess.run([sys.executable, "-c", "from prunelab.pipelines.distill_prune import _peak_memory_mb, "
                            "_peak_memory_source; print(_peak_memory_mb(), _peak_memory_source())"],
                           capture_output=True, text=True, check=True, timeout=300)
    del ballast
    peak, source = child.stdout.split(" ", 1)
    assert 0 < float(peak) < 550 and "VmHWM" in source, child.stdout  # importing torch + transformers: ~0.3 GB
