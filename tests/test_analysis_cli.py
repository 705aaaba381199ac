import csv
import json

import pytest
from conftest import tiny_model

from prunelab.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def analyze(*args):
    return main(["analyze", *map(str, args)])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path):
    data = json.loads(path.read_text())
    assert set(data) == {"analysis", "inputs", "versions", "result"}
    return data


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, path


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(f"w{i} w{i + 1} w{i + 2} w{(3 * i) % 50}" for i in range(20)) + "\n")
    return path


def test_weights(bert_dir, tmp_path):
    out = tmp_path / "weights"
    assert analyze("weights", bert_dir, "--out", out) == 0
    rows = read_csv(out / "weights.csv")
    assert len(rows) == 2 * 6 + 1 and rows[0]["name"] == "embeddings.word_embeddings.weight"  # an MLM has no pooler
    assert {r["kind"] for r in read_csv(out / "weights_by_kind.csv")} >= {"query", "embeddings", "all"}
    result = read_json(out / "weights.json")["result"]
    assert result["overall"]["numel"] == sum(int(r["numel"]) for r in rows)
    assert_png(out / "weights.png")


def test_mass_and_heads(bert_dir, tmp_path):
    out = tmp_path / "mass"
    assert analyze("mass", bert_dir, "--sparsities", "0,0.5,0.9", "--out", out) == 0
    rows = read_csv(out / "mass.csv")
    overall = [r for r in rows if r["kind"] == "all"]
    assert [float(r["sparsity"]) for r in overall] == [0.0, 0.5, 0.9] and float(overall[0]["pruned_mass"]) == 0.0
    assert 0 < float(overall[1]["fraction"]) < float(overall[2]["fraction"]) < 1
    assert_png(out / "mass.png")

    out = tmp_path / "heads"
    assert analyze("heads", bert_dir, "--out", out) == 0
    summary = [r for r in read_csv(out / "heads_summary.csv") if r["kind"] == "all"]
    assert len(summary) == 10 and float(summary[5]["mean"]) == pytest.approx(0.5, abs=0.01)
    assert len(read_csv(out / "heads.csv")) == 10 * 2 * 4 * 4  # sparsities x layers x attention matrices x heads
    assert read_json(out / "heads.json")["result"]["heads"] == 4
    assert_png(out / "heads.png")


def test_heatmap(bert_dir, tmp_path):
    out = tmp_path / "heat"
    assert analyze("heatmap", bert_dir, "--layer", 1, "--out", out) == 0
    assert_png(out / "key_layer1.png")
    assert_png(out / "embeddings.png")
    summary = read_json(out / "heatmap.json")["result"]
    assert summary["key"]["name"] == "encoder.layer.1.attention.self.key.weight" and len(summary["key"]["head_mean_abs"]) == 4
    lengths = read_csv(out / "embeddings_by_length.csv")
    assert sum(int(r["count"]) for r in lengths) == 64


def test_heatmap_of_a_model_without_tokenizer(tmp_path, capsys):
    tiny_model("xlnet").save_pretrained(tmp_path / "xlnet")
    out = tmp_path / "heat"
    assert analyze("heatmap", tmp_path / "xlnet", "--out", out) == 0
    assert "skipping the word-embedding heatmap" in capsys.readouterr().out
    assert_png(out / "key_layer0.png")
    assert not (out / "embeddings.png").exists()
    assert read_json(out / "heatmap.json")["result"]["key"]["name"] == "layer.0.rel_attn.k"


def test_movement_and_mask_diff_before_and_after(bert_dir, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM

    after = AutoModelForMaskedLM.from_pretrained(bert_dir)
    with torch.no_grad():
        after.bert.encoder.layer[0].output.dense.weight.mul_(torch.rand(32, 37) + 0.5)
    after.save_pretrained(tmp_path / "after")

    out = tmp_path / "move"
    assert analyze("movement", bert_dir, tmp_path / "after", "--out", out) == 0
    rows = {r["name"]: r for r in read_csv(out / "movement.csv")}
    assert float(rows["encoder.layer.0.output.dense.weight"]["mean_abs"]) > 1.0
    assert float(rows["encoder.layer.1.output.dense.weight"]["mean_abs"]) == 0.0
    result = read_json(out / "movement.json")["result"]
    assert result["seconds"] >= 0 and len(read_csv(out / "movement_bins.csv")) == 20
    assert_png(out / "movement.png")

    out = tmp_path / "diff"
    assert analyze("mask-diff", bert_dir, tmp_path / "after", "--sparsity", 0.6, "--out", out) == 0
    rows = {r["name"]: r for r in read_csv(out / "mask_diff.csv")}
    assert float(rows["encoder.layer.0.output.dense.weight"]["differ"]) > 0.0
    assert float(rows["encoder.layer.1.output.dense.weight"]["differ"]) == 0.0
    assert read_json(out / "mask_diff.json")["result"]["overall"]["sparsity_a"] == pytest.approx(0.6, abs=1e-3)
    assert_png(out / "mask_diff.png")


def test_mask_diff_of_two_pruned_artifacts(bert_dir, tmp_path):
    assert main(["prune", str(bert_dir), "--sparsity", "0.5", "--out", str(tmp_path / "mag")]) == 0
    assert main(["prune", str(bert_dir), "--sparsity", "0.5", "--criterion", "random", "--out", str(tmp_path / "rnd")]) == 0
    out = tmp_path / "diff"
    assert analyze("mask-diff", tmp_path / "mag", tmp_path / "rnd" / "masks.safetensors", "--out", out, "--no-figure") == 0
    overall = read_json(out / "mask_diff.json")["result"]["overall"]
    assert overall["differ"] == pytest.approx(overall["random_baseline"], abs=0.05)
    assert not (out / "mask_diff.png").exists()


def test_similarity_and_sensitivity(bert_dir, tmp_path, text_file):
    assert main(["prune", str(bert_dir), "--sparsity", "0.7", "--out", str(tmp_path / "p")]) == 0
    out = tmp_path / "sim"
    assert analyze("similarity", tmp_path / "p", "--reference", bert_dir, "--sparsities", "0,0.7", "--text", text_file,
                   "--batch-size", 8, "--out", out) == 0
    rows = read_csv(out / "similarity.csv")
    by = {(r["label"], int(r["layer"])): float(r["mean"]) for r in rows}
    assert by[("one-shot 0%", 2)] == pytest.approx(1.0, abs=1e-5)
    assert by[(str(tmp_path / "p"), 2)] == pytest.approx(by[("one-shot 70%", 2)], abs=1e-5)  # the same pruning
    assert read_json(out / "similarity.json")["inputs"]["texts"] == 20
    assert_png(out / "similarity.png")

    out = tmp_path / "sens"
    assert analyze("sensitivity", bert_dir, "--sparsity", 0.5, "--by", "kind", "--max-texts", 24, "--out", out) == 0
    rows = read_csv(out / "sensitivity.csv")
    assert [r["group"] for r in rows][-1] == "all" and "ffn_out" in {r["group"] for r in rows}
    sensitivity = read_json(out / "sensitivity.json")
    assert sensitivity["result"]["metric"] == "mlm_loss" and sensitivity["inputs"]["text"] == "packaged sample"
    assert sensitivity["inputs"]["texts"] == 24
    assert_png(out / "sensitivity.png")


def bad_inputs(bert_dir, tmp_path):
    distil = tmp_path / "distil"
    tiny_model("distilbert").save_pretrained(distil)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    out = tmp_path / "out"
    return [
        (["weights", tmp_path / "missing", "--out", out], "is not a directory"),
        (["mass", bert_dir, "--sparsities", "0,1.5", "--out", out], "sparsity in --sparsities 1.5 is outside [0, 1]"),
        (["mass", bert_dir, "--sparsities", "a,b", "--out", out], "--sparsities 'a,b' is not a comma-separated list"),
        (["heads", bert_dir, "--out", full], "is not empty; choose another --out or pass --overwrite"),
        (["heatmap", bert_dir, "--layer", 5, "--out", out], "layer 5 does not exist"),
        (["movement", bert_dir, distil, "--out", out], "is a bert model and"),
        (["mask-diff", bert_dir, bert_dir, "--out", out], "has no masks.safetensors; pass --sparsity"),
        (["mask-diff", bert_dir, bert_dir, "--sparsity", -0.1, "--out", out], "sparsity -0.1 is outside [0, 1]"),
        (["similarity", bert_dir, "--out", out], "nothing to compare"),
        (["similarity", bert_dir, "--sparsities", "0.5", "--text", tmp_path / "no.txt", "--out", out], "does not exist"),
        (["similarity", bert_dir, "--reference", distil, "--out", out], "distil' is a distilbert model and"),
        (["similarity", distil, "--sparsities", "0.5", "--out", out], "pass a model directory with its tokenizer files"),
        (["sensitivity", bert_dir, "--sparsity", 2, "--out", out], "sparsity 2.0 is outside [0, 1]"),
    ]


def test_bad_input_is_one_line_and_exit_2(bert_dir, tmp_path, capsys):
    for args, message in bad_inputs(bert_dir, tmp_path):
        capsys.readouterr()
        assert analyze(*args) == 2, args
        err = capsys.readouterr().err
        assert message in err, (message, err)
        assert err.startswith("prunelab analyze: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_overwrite_and_missing_matplotlib(bert_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "w"
    assert analyze("weights", bert_dir, "--out", out) == 0
    assert analyze("weights", bert_dir, "--out", out) == 2
    assert analyze("weights", bert_dir, "--out", out, "--overwrite") == 0
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    capsys.readouterr()
    assert analyze("weights", bert_dir, "--out", out, "--overwrite") == 2
    assert "pip install 'prunelab[analysis]'" in capsys.readouterr().err
    assert analyze("weights", bert_dir, "--out", tmp_path / "csv-only", "--no-figure") == 0
    assert sorted(p.name for p in (tmp_path / "csv-only").iterdir()) == [".prunelab", "weights.csv", "weights.json", "weights_by_kind.csv"]


def test_library_writes_the_same_files_as_the_cli(bert_dir, tmp_path):
    from prunelab.analysis import write_analysis

    cases = [("weights", {}, [], ["weights.csv", "weights_by_kind.csv", "weights.json", "weights.png"]),
             ("mass", {"sparsities": [0, 0.5, 0.9], "scope": "global"},
              ["--sparsities", "0,0.5,0.9", "--scope", "global"], ["mass.csv", "mass.json", "mass.png"])]
    for name, inputs, options, files in cases:
        cli, lib = tmp_path / f"cli-{name}", tmp_path / f"lib-{name}"
        assert analyze(name, bert_dir, *options, "--out", cli) == 0
        written = write_analysis(name, lib, model=str(bert_dir), **inputs)
        assert written.files == [lib / f for f in files] and written.messages == []
        assert sorted(p.name for p in lib.iterdir()) == sorted(p.name for p in cli.iterdir()) == sorted([".prunelab", *files])
        for path in written.files:
            if path.suffix == ".png":
                assert_png(path)
            else:  # the tables and the JSON record (inputs, versions, result) are the CLI's to the byte
                assert path.read_bytes() == (cli / path.name).read_bytes(), path.name
        assert read_json(lib / f"{name}.json")["analysis"] == name
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_analysis("mass", lib, model=str(bert_dir))
    assert write_analysis("mass", lib, figure=False, overwrite=True, model=str(bert_dir)).files[-1].name == "mass.json"
    with pytest.raises(ValueError, match="unknown analysis 'size'"):
        write_analysis("size", tmp_path / "size", model=str(bert_dir))
