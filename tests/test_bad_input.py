"""Bad input, probed as a careful new user would: every command x its bad inputs -> one line naming the value,
exit code 2, and nothing written; resumes that would relabel old results are refused; spec values are fuzzed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glue_fixtures import glue_dir, save_tiny, write_corpus  # noqa: F401
from prunelab.cli import main
from study_fixtures import make_study


@pytest.fixture
def world(tmp_path, glue_dir):  # noqa: F811
    """A tiny model (and one missing a prunable weight), GLUE files, a corpus, a regular file and a study spec."""
    model = save_tiny(tmp_path / "model")
    partial = tmp_path / "partial"
    shutil.copytree(model, partial)
    from safetensors.torch import load_file, save_file

    weights = load_file(partial / "model.safetensors")
    del weights["bert.encoder.layer.1.attention.self.query.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    stsb = tmp_path / "glue-nan"
    shutil.copytree(glue_dir, stsb)
    lines = (stsb / "STS-B" / "train.tsv").read_text().splitlines()
    lines[1] = "\t".join(lines[1].split("\t")[:-1] + ["nan"])
    (stsb / "STS-B" / "train.tsv").write_text("\n".join(lines) + "\n")
    latin1 = tmp_path / "glue-latin1"
    shutil.copytree(glue_dir, latin1)
    (latin1 / "RTE" / "train.tsv").write_bytes((latin1 / "RTE" / "train.tsv").read_bytes() + "caf\xe9\n".encode("latin-1"))
    big_vocab = tmp_path / "big-vocab"
    big_vocab.mkdir()
    import transformers

    (big_vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"t{i}" for i in range(200)]))
    transformers.BertTokenizerFast(vocab=str(big_vocab / "vocab.txt")).save_pretrained(big_vocab)
    pruned = tmp_path / "pruned"
    assert main(["prune", str(model), "--sparsity", "0.5", "--out", str(pruned)]) == 0
    from prunelab.masks_io import load_masks, save_masks

    for name, change in (("extra-mask", lambda m: {**m, "encoder.layer.9.output.dense.weight": m["encoder.layer.0.output.dense.weight"].clone()}),
                         ("wrong-shape", lambda m: {**m, "encoder.layer.0.output.dense.weight": m["encoder.layer.0.output.dense.weight"][:, :16]})):
        shutil.copytree(pruned, tmp_path / name)
        save_masks(change(load_masks(pruned / "masks.safetensors")), tmp_path / name / "masks.safetensors")
    typo = tmp_path / "typo-config"
    shutil.copytree(model, typo)
    (typo / "config.json").write_text((typo / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": "2"'))
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    return {"model": str(model), "partial": str(partial), "glue": str(glue_dir), "stsb_nan": str(stsb),
            "latin1": str(latin1), "big_vocab": str(big_vocab), "corpus": str(write_corpus(tmp_path / "c.txt")),
            "file": str(regular), "tmp": tmp_path}


def glue(command: str, w: dict, *extra: str, task: str = "rte", data: str | None = None) -> list[str]:
    base = [command, w["model"], "--task", task, "--data-dir", data or w["glue"], "--out", str(w["tmp"] / "out"),
            "--epochs", "1", "--batch-size", "4", "--max-seq-len", "16"]
    return base + (["--sparsity", "0.5"] if command == "adapt" else []) + (["--teacher", "none"] if command == "distill-prune" else []) + list(extra)


# (argv builder, a piece of the one-line error)
CASES = [
    (lambda w: ["prune", w["model"], "--sparsity", "nan", "--out", str(w["tmp"] / "out")], "sparsity nan is outside [0, 1]"),
    (lambda w: ["prune", w["partial"], "--sparsity", "0.5", "--out", str(w["tmp"] / "out")],
     "lacks the prunable weight 'bert.encoder.layer.1.attention.self.query.weight'"),
    (lambda w: ["prune", "models/does-not-exist", "--sparsity", "0.5", "--out", str(w["tmp"] / "out")], "no such local path either"),
    (lambda w: ["inspect", w["partial"]], "lacks the prunable weight"),
    (lambda w: ["inspect", str(w["tmp"] / "typo-config")], "num_hidden_layers' expected int, got str"),
    (lambda w: ["inspect", str(w["tmp"] / "extra-mask")], "unexpected ['encoder.layer.9.output.dense.weight']"),
    (lambda w: ["inspect", str(w["tmp"] / "wrong-shape")], "the mask of 'encoder.layer.0.output.dense.weight' has shape (32, 16)"),
    (lambda w: glue("finetune", w, "--grad-accum", "0"), "--grad-accum 0 must be a whole number >= 1"),
    (lambda w: glue("finetune", w, "--grad-accum", "-1"), "--grad-accum -1 must be a whole number >= 1"),
    (lambda w: glue("finetune", w, "--warmup-ratio", "2"), "--warmup-ratio 2.0 must be a number >= 0 and < 1"),
    (lambda w: glue("finetune", w, "--report-to", "nosuch"), "--report-to 'nosuch': unknown integration 'nosuch'"),
    (lambda w: glue("finetune", w, "--lr", "0"), "--lr 0.0 must be a number > 0"),
    (lambda w: glue("finetune", w, "--lr", "nan"), "--lr nan must be a number > 0"),
    (lambda w: glue("finetune", w, "--seed", str(2**64)), f"--seed {2**64} must be a whole number"),
    (lambda w: glue("finetune", w, "--epochs", "0"), "--epochs 0.0 must be a number > 0"),
    (lambda w: glue("finetune", w, data=str(w["tmp"] / "no-glue")), "RTE/train.tsv not found"),
    (lambda w: glue("finetune", w, task="stsb", data=w["stsb_nan"]), "score 'nan' is not a finite number"),
    (lambda w: glue("finetune", w, data=w["latin1"]), "not UTF-8 text"),
    (lambda w: glue("finetune", w, "--tokenizer", w["big_vocab"]), "has 205 entries, but model"),
    (lambda w: glue("finetune", w, "--fp16", "--bf16"), "--fp16 and --bf16 exclude each other"),
    (lambda w: glue("adapt", w, "--band", "nan"), "--band nan must be a number >= 0"),
    (lambda w: glue("adapt", w, "--penalty", "-1"), "--penalty -1.0 must be a number >= 0"),
    (lambda w: glue("adapt", w, "--grad-accum", "0"), "--grad-accum 0 must be"),
    (lambda w: glue("distill-prune", w, "--alpha-hard", "-1", "--teacher", w["model"]), "--alpha-hard -1.0 must be a number >= 0"),
    (lambda w: glue("distill-prune", w, "--prune-every", "0"), "--prune-every 0 must be a whole number >= 1"),
    (lambda w: ["pretrain", w["model"], "--corpus", w["corpus"], "--steps", "2", "--sparsity", "0.5", "--grad-accum", "0",
                "--out", str(w["tmp"] / "out")], "--grad-accum 0 must be"),
    (lambda w: ["pretrain", w["model"], "--corpus", w["corpus"], "--steps", "2", "--sparsity", "0.5", "--mlm-probability", "1.5",
                "--out", str(w["tmp"] / "out")], "--mlm-probability 1.5 must be"),
    (lambda w: ["pretrain", w["model"], "--corpus", str(w["tmp"] / "none.txt"), "--steps", "2", "--sparsity", "0.5",
                "--out", str(w["tmp"] / "out")], "none.txt not found"),
    (lambda w: ["prune", w["model"], "--sparsity", "0.5", "--out", w["file"], "--overwrite"], "exists and is not a directory"),
    (lambda w: ["drop-layers", w["model"], "--layers", "0,1", "--out", str(w["tmp"] / "out")], "cannot drop layers [0, 1]"),
    (lambda w: ["analyze", "weights", w["partial"], "--out", str(w["tmp"] / "out")], "lacks the prunable weight"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, capsys, case):
    argv, says = CASES[case]
    before = sorted(p.relative_to(world["tmp"]) for p in world["tmp"].rglob("*"))
    assert main(argv(world)) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.relative_to(world["tmp"]) for p in world["tmp"].rglob("*")) == before  # nothing written


def test_finetune_resume_refuses_another_task_and_a_finished_run_is_a_no_op(world, capsys):
    ok = glue("finetune", world, "--lr", "1e-3")
    assert main(ok) == 0
    metrics = (world["tmp"] / "out" / "metrics.json").read_text()
    capsys.readouterr()
    assert main(glue("finetune", world, "--lr", "1e-3", "--resume", task="sst2")) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "task differ" in err and err.count("\n") == 1
    assert (world["tmp"] / "out" / "metrics.json").read_text() == metrics  # nothing relabelled
    assert main([*ok, "--resume"]) == 0
    assert capsys.readouterr().out.startswith("already finished, nothing run")
    assert (world["tmp"] / "out" / "metrics.json").read_text() == metrics


def test_pretrain_resume_of_a_finished_run_is_a_no_op_and_another_sparsity_is_refused(world, capsys):
    def argv(sparsity: str) -> list[str]:
        return ["pretrain", world["model"], "--corpus", world["corpus"], "--steps", "2", "--sparsity", sparsity,
                "--batch-size", "4", "--max-seq-len", "16", "--out", str(world["tmp"] / "pre")]

    assert main(argv("0.5")) == 0
    stamp = (world["tmp"] / "pre" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv("0.5"), "--resume"]) == 0
    assert "already finished, nothing run" in capsys.readouterr().out
    assert main([*argv("0.7"), "--resume"]) == 2
    assert "sparsity differ" in capsys.readouterr().err
    assert (world["tmp"] / "pre" / "metrics.json").stat().st_mtime_ns == stamp
    config = json.loads((world["tmp"] / "pre" / "run_config.json").read_text())
    assert config["config"]["sparsity"] == 0.5  # the refused resume did not rewrite what the run was


@pytest.mark.parametrize("extra, says", [
    ('[finetune]\nseeds = ["0/../../../../escaped"]\n', "[finetune] seeds in"),
    ('[finetune]\nlrs = 1e-3\n', "[finetune] lrs in"),
    ('[pretrain]\nsteps = -1\n', "[pretrain] steps in"),
    ('[pretrain]\nsteps = 0\n', "[pretrain] steps = 0 in"),  # nothing to prune during pre-training, which pruned does
    ('[finetune]\ntasks = []\n', "[finetune] tasks in"),
    ('[finetune]\nepochs = "1"\n', "[finetune] epochs in"),
    ('[finetune]\nbatch_size = 0\n', "[finetune] batch_size in"),
    ('[pretrain]\nprune_every = 0\n', "[pretrain] prune_every in"),
    ('[distill]\nprune_start = 0.8\n', "[distill] prune_start 0.8 in"),
])
def test_bad_spec_values_fail_at_load_naming_the_key_and_write_nothing(tmp_path, capsys, extra, says):
    spec = make_study(tmp_path)
    text = spec.read_text()
    section = extra.split("]")[0] + "]"
    key = extra.split("\n")[1].split(" =")[0]
    text = "\n".join(line for line in text.splitlines() if not (line.startswith(key + " =")))  # the spec's own value goes
    spec.write_text(text.replace(section, extra.rstrip("\n"), 1) if section in text else text + "\n" + extra)
    capsys.readouterr()  # what writing the tiny model printed (a progress bar, unless an earlier test quieted it)
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert says in err and str(spec) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("escaped"))


def test_study_resume_with_other_data_is_refused(tmp_path, capsys):
    spec = make_study(tmp_path)
    from prunelab.study.runner import init_study_dir
    from prunelab.study.spec import load_spec

    init_study_dir(load_spec(spec), tmp_path / "out", tmp_path / "data")
    shutil.copytree(tmp_path / "data", tmp_path / "data2")
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data2")]) == 2
    assert "pass --data" in capsys.readouterr().err
    assert not list((tmp_path / "out" / "runs").iterdir())


def test_a_run_id_that_leaves_the_study_is_refused(tmp_path):
    from prunelab.study.runner import run_dir

    with pytest.raises(ValueError, match="does not name a directory inside"):
        run_dir(tmp_path, "finetune-x-seed0/../../../../elsewhere")
    assert run_dir(tmp_path, "finetune-dense-s0.00-rte-lr0.001-seed0") == tmp_path / "runs" / "finetune-dense-s0.00-rte-lr0.001-seed0"


SPEC_KEYS = {
    "pretrain": ["steps", "prune_end", "prune_every", "batch_size", "max_seq_len", "lr", "head_warmup_steps", "max_train_lines",
                 "max_dev_blocks"],
    "finetune": ["tasks", "lrs", "epochs", "seeds", "batch_size", "max_seq_len", "max_train_samples", "prune_after_epochs",
                 "epochs_after_pruning"],
    "layer_drop": ["strategies", "counts"],
    "adapt": ["lrs", "head_lr", "penalty", "ramp", "band", "exact", "epochs"],
"distill": ["temperature", "alpha_attention", "alpha_hidden", "alpha_logits", "alpha_hard", "prune_start", "prune_end",
                "prune_every"],
    "resources": ["cpus", "gpus"],
}
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=5)  # what a TOML string can hold
VALUES = st.one_of(st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=2), TEXT,
                   st.booleans(), st.lists(st.one_of(st.integers(-2, 3), st.floats(-1, 1), TEXT), max_size=3))


def _toml(value) -> str:
    """TOML for a JSON-typed value (TOML's strings, numbers, booleans and arrays read JSON's literals)."""
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(sorted(SPEC_KEYS)), data=st.data(), value=VALUES)
def test_fuzzed_spec_values_load_to_a_plan_or_fail_naming_the_key(tmp_path_factory, section, data, value):
    """Any type and value for any key: loading either succeeds and the plan expands, or fails with a ValueError
    that names the key (never another exception, never a plan that fails later on the same value)."""
    from prunelab.study.plan import expand
    from prunelab.study.spec import load_spec

    key = data.draw(st.sampled_from(SPEC_KEYS[section]))
    path = tmp_path_factory.mktemp("fuzz") / "s.toml"
    path.write_text(f'name = "f"\nmodel = "m"\nsparsities = [0.0, 0.5]\nregimes = ["pruned", "layer_drop", "adapt", "distill"]\n'
                    f'[{section}]\n{key} = {_toml(value)}\n')
    try:
        spec = load_spec(path)
    except ValueError as err:
        assert key in str(err), str(err)
        return
    assert expand(spec)  # a spec that loads plans
    assert getattr(getattr(spec, section), key) == value


def test_fingerprint_ignores_the_run_directory_and_what_the_run_does_not_read(world):
    from prunelab.pipelines.common import fingerprint
    from prunelab.pipelines.finetune import FinetuneConfig

    out = Path(world["model"]) / "runs" / "ft"  # the run directory inside its own model directory
    first = fingerprint(FinetuneConfig(model=world["model"], task="rte", out=str(out), data_dir=world["glue"]))
    out.mkdir(parents=True)
    (out / "run_config.json").write_text("{}")  # what the run itself writes must not change its identity
    (Path(world["glue"]) / "MNLI-extra").mkdir()  # another task's data is not this run's input
    again = fingerprint(FinetuneConfig(model=world["model"] + "/", task="RTE", out=str(out), data_dir=world["glue"] + "/"))
    assert again["files"] == first["files"] and again["config"]["data_dir"] == first["config"]["data_dir"]
    (Path(world["glue"]) / "RTE" / "dev.tsv").write_text((Path(world["glue"]) / "RTE" / "dev.tsv").read_text() + "\n")
    changed = fingerprint(FinetuneConfig(model=world["model"], task="rte", out=str(out), data_dir=world["glue"]))
    assert changed["files"]["data_dir"] != first["files"]["data_dir"]  # this task's data changed: another run


def test_a_study_killed_between_creating_its_directory_and_study_json_reopens(tmp_path):
    from prunelab.study.runner import init_study_dir, open_study
    from prunelab.study.spec import load_spec

    spec = load_spec(make_study(tmp_path))
    (tmp_path / "out" / "runs").mkdir(parents=True)  # what an older runner left when killed before study.json
    init_study_dir(spec, tmp_path / "out", spec.data_dir())
    assert open_study(tmp_path / "out")[0].name == spec.name


@pytest.mark.parametrize("argv, says", [
    (["finetune", "minilm", "--task", "sst2", "--structure", "2:4", "--out", "x"], "unrecognized arguments: --structure 2:4"),
    (["prune", "minilm", "--sparsity", "0.5"], "prunelab prune: the following arguments are required: --out"),
    (["prune", "minilm", "--scope", "rows", "--out", "x"], "argument --scope: invalid choice: 'rows'"),
])
def test_a_flag_argparse_refuses_is_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and err.count("\n") == 1 and "--help" in err, err
    assert not list(tmp_path.iterdir())
