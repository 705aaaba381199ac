import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM

from prunelab import artifact, load_masks
from prunelab.cli import main


def prune_cli(*args):
    return main(["prune", *map(str, args)])


@pytest.mark.parametrize("criterion", ["magnitude", "random"])
@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_prune_writes_an_artifact_that_plain_transformers_loads(bert_dir, tmp_path, criterion, scope):
    out = tmp_path / "pruned"
    assert prune_cli(bert_dir, "--sparsity", 0.6, "--criterion", criterion, "--scope", scope, "--out", out) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "masks.safetensors", "prunelab.json", "tokenizer.json"} <= names
    assert not list(tmp_path.glob(".pruned.*"))  # no temporary leftovers

    info = json.loads((out / "prunelab.json").read_text())
    assert info["config"]["sparsity"] == 0.6 and info["config"]["criterion"] == criterion
    assert set(info["versions"]) == {"prunelab", "torch", "transformers"}
    assert info["report"]["overall"]["sparsity"] >= 0.6 - 1e-3
    assert {"query", "ffn_out", "embeddings"} <= set(info["report"]["by_kind"]) and "0" in info["report"]["by_layer"]

    masks = load_masks(out / "masks.safetensors")
    plain = AutoModel.from_pretrained(out)  # vanilla load, another head class than was saved
    mlm = AutoModelForMaskedLM.from_pretrained(out)
    for name, mask in masks.items():
        weight = plain.get_parameter(name)
        assert bool((weight[~mask] == 0).all()), name
        assert torch.equal(mlm.bert.get_parameter(name), weight)
    assert torch.equal(mlm.cls.predictions.decoder.weight == 0, ~masks["embeddings.word_embeddings.weight"] | (mlm.cls.predictions.decoder.weight == 0))


def test_prune_exclude_and_layers(bert_dir, tmp_path):
    out = tmp_path / "p"
    assert prune_cli(bert_dir, "--sparsity", 0.5, "--exclude", "embeddings,pooler", "--layers", "1", "--out", out) == 0
    masks = load_masks(out / "masks.safetensors")
    assert masks and all(name.startswith("encoder.layer.1.") for name in masks)
    plain, source = AutoModel.from_pretrained(out), AutoModel.from_pretrained(bert_dir)
    assert torch.equal(plain.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)
    assert torch.equal(plain.encoder.layer[0].output.dense.weight, source.encoder.layer[0].output.dense.weight)


def test_inspect_table_and_json(bert_dir, tmp_path, capsys):
    assert main(["inspect", str(bert_dir)]) == 0
    text = capsys.readouterr().out
    assert "encoder.layer.1.intermediate.dense.weight" in text and "ffn_in" in text and f"embeddings {1 / 64:.2%}" in text  # the padding row
    out = tmp_path / "p"
    prune_cli(bert_dir, "--sparsity", 0.3, "--out", out)
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    row = next(r for r in table["targets"] if r["kind"] == "value" and r["layer"] == 0)
    assert row["shape"] == [32, 32] and row["numel"] == 1024 and row["mask_sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert row["zeros"] >= round(0.3 * 1024)


def test_interrupted_write_leaves_no_output(bert_dir, tmp_path, monkeypatch):
    out = tmp_path / "p"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "save_masks", crash)
    assert prune_cli(bert_dir, "--sparsity", 0.5, "--out", out) == 130
    assert not out.exists() and list(tmp_path.iterdir()) == [bert_dir]


def test_overwrite_replaces_atomically(bert_dir, tmp_path):
    out = tmp_path / "p"
    prune_cli(bert_dir, "--sparsity", 0.2, "--out", out)
    assert prune_cli(bert_dir, "--sparsity", 0.7, "--out", out, "--overwrite") == 0
    assert json.loads((out / "prunelab.json").read_text())["config"]["sparsity"] == 0.7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "tiny-bert"]


def bad_inputs(bert_dir, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((bert_dir / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1}')
    out = tmp_path / "out"
    return [
        ([bert_dir, "--sparsity", 1.5, "--out", out], "sparsity 1.5 is outside [0, 1]"),
        ([bert_dir, "--sparsity", -0.2, "--out", out], "sparsity -0.2 is outside [0, 1]"),
        ([tmp_path / "missing", "--sparsity", 0.5, "--out", out], "is not a directory"),
        ([bert_dir, "--sparsity", 0.5, "--exclude", "embedings", "--out", out], "unknown kind 'embedings' in exclude"),
        ([bert_dir, "--sparsity", 0.5, "--out", full], "is not empty; choose another --out or pass --overwrite"),
        ([corrupt, "--sparsity", 0.5, "--out", out], "cannot load the weights of"),
        ([gpt, "--sparsity", 0.5, "--out", out], "unsupported model_type 'gpt2'"),
        ([bert_dir, "--sparsity", 0.5, "--layers", "one", "--out", out], "--layers 'one' is not a comma-separated list"),
        ([bert_dir, "--sparsity", 0.5, "--layers", "7", "--out", out], "layer 7 does not exist"),
    ]


def test_bad_input_is_one_line_and_exit_2(bert_dir, tmp_path, capsys):
    for args, message in bad_inputs(bert_dir, tmp_path):
        capsys.readouterr()
        assert prune_cli(*args) == 2, args
        err = capsys.readouterr().err
        assert message in err, (message, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_corrupt_masks_file_is_a_clear_error(bert_dir, tmp_path, capsys):
    out = tmp_path / "p"
    prune_cli(bert_dir, "--sparsity", 0.5, "--out", out)
    (out / "masks.safetensors").write_bytes(b"garbage" * 5)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 2
    assert "is corrupt or not safetensors" in capsys.readouterr().err


def test_console_script_runs_as_a_process(bert_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "prunelab", "prune", str(bert_dir), "--sparsity", "2", "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("prunelab prune: error: sparsity 2.0 is outside")
    assert "Traceback" not in result.stderr


def test_a_model_without_tokenizer_files_has_no_tokenizer(tmp_path):
    from conftest import tiny_model

    tiny_model("bert").save_pretrained(tmp_path / "bare")
    model, tokenizer = artifact.load_model(str(tmp_path / "bare"))
    assert tokenizer is None and model.config.model_type == "bert"


@pytest.mark.parametrize("argv, target, says", [
    (["prune", "M", "--sparsity", "0.5", "--out", "O"], "prunelab.oneshot.prune", "nothing was written (O is unchanged)"),
    (["finetune", "M", "--task", "rte", "--out", "O"], "prunelab.pipelines.finetune.finetune",
     "O keeps what was finished: run the same command with --resume to continue"),
    (["pretrain", "M", "--corpus", "c.txt", "--steps", "2", "--sparsity", "0.5", "--out", "O"],
     "prunelab.pipelines.pretrain.pretrain", "--resume to continue"),
    (["study", "run", "s.toml", "--out", "O"], "prunelab.study.spec.load_spec", "finished runs are kept in O"),
])
def test_ctrl_c_says_what_is_true_of_the_output(monkeypatch, capsys, argv, target, says):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module, _, name = target.rpartition(".")
    monkeypatch.setattr(__import__(module, fromlist=[name]), name, interrupted)
    if argv[0] == "prune":
        monkeypatch.setattr("prunelab.cli.prune_cmd.prune", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert says in err and "nothing was written" not in err.replace("nothing was written (O", "") and err.count("\n") == 1


def test_an_internal_error_shows_its_traceback_not_a_one_line_message(bert_dir, monkeypatch, capsys):
    """A bug's KeyError once printed as `error: 'dev'` and nothing else."""
    def buggy(*args, **kwargs):
        return {}["dev"]

    from prunelab.cli import inspect_cmd

    monkeypatch.setattr(inspect_cmd, "inspect", buggy)
    assert main(["inspect", str(bert_dir)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'return {}["dev"]' in err
    assert "prunelab inspect: internal error (KeyError: 'dev'); this is a bug in prunelab" in err.splitlines()[-1]


def test_a_deliberate_error_is_one_line_and_an_os_error_names_its_path(bert_dir, tmp_path, capsys):
    assert prune_cli(bert_dir, "--sparsity", 2, "--out", tmp_path / "x") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert prune_cli(bert_dir, "--sparsity", 0.5, "--out", a_file / "out") == 2  # the OS refuses to make the directory
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[Errno" in err and str(a_file) in err and "internal error" not in err


def test_a_checkpoint_prunelab_refuses_shows_only_prunelabs_line(bert_dir, tmp_path):
    """transformers' load report (7 lines) once came first; in a subprocess, so that its own stderr handler writes."""
    from safetensors.torch import load_file, save_file

    weights = load_file(bert_dir / "model.safetensors")
    del weights["bert.encoder.layer.1.attention.self.query.weight"]
    save_file(weights, bert_dir / "model.safetensors", metadata={"format": "pt"})
    result = subprocess.run([sys.executable, "-m", "prunelab", "inspect", str(bert_dir)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"prunelab inspect: error: checkpoint {str(bert_dir)!r} lacks the prunable weight "
        "'bert.encoder.layer.1.attention.self.query.weight'; it is partial or does not match its config: re-save it with "
        "save_pretrained"]
