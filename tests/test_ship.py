"""`prunelab ship`: every deployment form measured alike, the choice rule, the files it writes, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
import transformers

from conftest import tiny_model
from glue_fixtures import WORDS, glue_dir  # noqa: F401 (fixture)
from prunelab import Pruner, PruningConfig
from prunelab.artifact import is_compressed, save_artifact
from prunelab.cli import main
from prunelab.deploy import ship as S
from prunelab.deploy.quantize import onnx_kind
from prunelab.deploy.speed import NOISE_FLOOR

FAST = ["--seq-len", "16", "--repeats", "3", "--threads", "1"]


def classifier(path, pruned: bool = False, labels: int = 2):
    """A tiny BERT classifier with a WordPiece tokenizer over the fixture words; `pruned`: 90% magnitude with masks."""
    model = tiny_model("bert", "cls")
    if labels != 2:
        config = model.config
        config.num_labels = labels
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config).eval()
    vocab = path.parent / f"{path.name}-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab))
    masks = None
    if pruned:
        pruner = Pruner(model, PruningConfig(sparsity=0.9))
        pruner.update_masks(0.9, step=0)
        masks = pruner.masks
    save_artifact(model, tokenizer, masks, {}, path)
    return path


def test_every_form_is_measured_and_the_chosen_one_written(tmp_path, glue_dir, capsys):  # noqa: F811
    model = classifier(tmp_path / "m", pruned=True)
    out = tmp_path / "out"
    assert main(["ship", str(model), "--task", "SST-2", "--data-dir", str(glue_dir), "--out", str(out),
                 "--batch-sizes", "1,2", *FAST]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "ship.json").read_text())
    rows = {r["form"]: r for r in result["forms"]}
    assert list(rows) == ["pytorch", "compressed", "onnx", "int8", "vocab", "vocab-int8"] and result["skipped"] == {}
    for row in rows.values():
        assert row["bytes"] > 0 and 0 <= row["score"] <= 100 and row["drop"] == pytest.approx(rows["pytorch"]["score"] - row["score"])
        assert set(row["latency_ms"]) == {"1", "2"} and all(ms > 0 for ms in row["latency_ms"].values())
        assert f"| {row['form']} | {row['kind']} | {row['bytes']:,} |" in printed
    assert rows["compressed"]["bytes"] < rows["pytorch"]["bytes"]  # 90% zeros stored as bitmasks
    assert rows["compressed"]["score"] == rows["pytorch"]["score"]  # lossless: the same model
    assert rows["compressed"]["latency_ms"] == rows["pytorch"]["latency_ms"] and rows["compressed"]["timed_as"] == "pytorch"
    assert rows["int8"]["kind"].startswith("onnx int8 (") and rows["onnx"]["kind"] == "onnx fp32"
    assert rows["int8"]["bytes"] < rows["onnx"]["bytes"]
    assert rows["vocab"]["kind"].startswith("pytorch fp32") and rows["vocab-int8"]["kind"].startswith("onnx int8 (")
    assert rows["vocab"]["bytes"] < rows["pytorch"]["bytes"]  # the embedding rows the training text never uses, gone
    assert rows["vocab-int8"]["bytes"] < rows["int8"]["bytes"]
    assert result["sparse_execution"] == "auto" and set(result["noise_floor"]) == {"1", "2"}
    chosen = [r for r in result["forms"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["form"] == result["chosen"] and chosen[0]["drop"] <= 1.0
    assert (out / chosen[0]["file"]).exists() and f"chosen: {result['chosen']} -> {chosen[0]['file']}" in printed
    assert "| form | what it is | bytes |" in (out / "ship.md").read_text()
    assert (out / "ship.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def row(ms: float, drop: float, size: int = 100) -> dict:
    return {"latency_ms": {"1": ms, "8": 10 * ms}, "drop": drop, "bytes": size}


@pytest.mark.parametrize("rows, max_drop, chosen", [
    ([row(10, 0), row(5, 0.5), row(3, 0.9)], 1.0, 2),  # the fastest within the budget
    ([row(10, 0), row(5, 0.5), row(3, 1.5)], 1.0, 1),  # never one over it, however fast
    ([row(10, 0), row(5, 1.01), row(3, 2.0)], 1.0, 0),  # none qualifies: the input
    ([row(10, 0), row(5, 0.0), row(3, 0.1)], 0.0, 1),  # --max-drop 0: only forms that lose nothing
    ([row(10, 0), row(5, -2.0)], 0.0, 1),  # a form that scores higher qualifies
    ([row(10, 0, 100), row(10, 0, 40), row(10, 0, 60)], 1.0, 1),  # equal latency: fewer bytes
    ([row(10, 0, 100), row(10, 0, 100)], 1.0, 0),  # all equal: the earlier
    ([row(10, 0), row(12, 0)], 1.0, 0),  # nothing faster than the input
])
def test_choose_takes_the_fastest_within_max_drop(rows, max_drop, chosen):
    assert S.choose(rows, max_drop, batch=1) == chosen


def fake_timer(fastest: str, calls: list):
    """A ``measure_speed`` stand-in: the form whose file name says `fastest` takes 1 ms, every other 5 ms."""
    def timer(models, *, batch_sizes, sparse_execution=None, **kwargs):
        calls.append({"models": list(models), "sparse_execution": sparse_execution})
        form = {"fp32.onnx": "onnx", "int8.onnx": "int8", "vocab": "vocab", "vocab-int8.onnx": "vocab-int8"}
        rows = [{"model": m, "batch": b, "median_ms": 1.0 if form.get(m.rsplit("/", 1)[-1], "pytorch") == fastest else 5.0,
                 "p10_ms": 0.5, "p90_ms": 6.0, "ratio": 1.0, "paired_ratio": 1.0}
                for b in batch_sizes for m in [*models, NOISE_FLOOR]]
        return {"threads": 1, "rows": rows, "sparse_execution": sparse_execution}
    return timer


@pytest.mark.parametrize("input_form, fastest, chosen", [
    ("pruned", "int8", "int8"),
    ("pruned", "pytorch", "compressed"),  # the same latency as the input, fewer bytes
    ("dense", "pytorch", None),  # the input or its compressed artifact, whichever is smaller
    ("compressed", "pytorch", "pytorch"),  # already compressed: the input itself, copied
    ("dense", "vocab", "vocab"),  # the cut model directory, with its re-indexed tokenizer
    ("pruned", "vocab-int8", "vocab-int8"),  # the cut model's INT8 graph, with the cut tokenizer
])
def test_the_files_written_load_and_run(tmp_path, glue_dir, input_form, fastest, chosen):  # noqa: F811
    from prunelab.artifact import from_pretrained
    from prunelab.deploy.compressed import compress

    model = classifier(tmp_path / "m", pruned=input_form != "dense")
    if input_form == "compressed":
        compress(str(model), tmp_path / "c")
        model = tmp_path / "c"
    calls = []
    result = S.ship(str(model), "sst2", str(glue_dir), tmp_path / "out", max_drop=100, batch_sizes=[1], seq_len=16,
                    repeats=2, progress=False, timer=fake_timer(fastest, calls))
    sizes = {r["form"]: r["bytes"] for r in result["forms"]}
    assert result["chosen"] == (chosen or ("compressed" if sizes["compressed"] < sizes["pytorch"] else "pytorch"))
    assert ("compressed" in sizes) == (input_form != "compressed")
    # the compressed artifact is not timed apart: it decodes to the input's very tensors
    assert [m.rsplit("/", 1)[-1] for m in calls[0]["models"]] == [model.name, "fp32.onnx", "int8.onnx", "vocab",
                                                                  "vocab-int8.onnx"]
    assert calls[0]["sparse_execution"] == (None if input_form == "dense" else "auto")
    ids = transformers.AutoTokenizer.from_pretrained(model)(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    inputs = {k: v for k, v in ids.items() if k != "token_type_ids"}
    with torch.no_grad():
        want = from_pretrained(model).model.eval()(**inputs).logits.numpy()
    out = tmp_path / "out"
    if result["chosen"] in ("int8", "vocab-int8"):
        assert onnx_kind(out / "model.onnx").startswith("onnx int8")
        tokenizer = transformers.AutoTokenizer.from_pretrained(out / "tokenizer")
        feed = {k: v.astype(np.int64) for k, v in tokenizer(["w1 w2 w3", "w4"], padding=True, return_tensors="np").items()
                if k in ("input_ids", "attention_mask")}
        got = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        assert got.shape == want.shape and np.abs(got - want).max() < 0.2 * np.abs(want).max() + 1e-3
        return
    compressed = is_compressed(out / "model")
    assert compressed == (result["chosen"] == "compressed" or input_form == "compressed")
    loaded = from_pretrained(out / "model").model if compressed else \
        transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")  # plain transformers
    if result["chosen"] == "vocab":  # its own tokenizer, re-indexed: text of kept words, other ids, the same logits
        cut = transformers.AutoTokenizer.from_pretrained(out / "model")
        kept = [w for w in WORDS if w in cut.get_vocab()][:5]
        texts = [" ".join(kept[:3]), " ".join(kept[3:])]
        mine = cut(texts, padding=True, return_tensors="pt")
        theirs = transformers.AutoTokenizer.from_pretrained(model)(texts, padding=True, return_tensors="pt")
        assert not torch.equal(mine["input_ids"], theirs["input_ids"])
        with torch.no_grad():
            want = from_pretrained(model).model.eval()(**{k: v for k, v in theirs.items() if k != "token_type_ids"}).logits.numpy()
        inputs = {k: v for k, v in mine.items() if k != "token_type_ids"}
    with torch.no_grad():
        got = loaded.eval()(**inputs).logits.numpy()
    assert np.array_equal(got, want)


@pytest.mark.parametrize("argv, says", [
    (["--task", "nope"], "unknown GLUE task 'nope'"),
    (["--task", "mnli"], "has 2 labels, mnli needs 3"),
    (["--max-drop", "-1"], "--max-drop -1.0 must be a number of dev-score points >= 0"),
    (["--seq-len", "100"], "--seq-len 100 exceeds what"),
    (["--batch-sizes", "0"], "--batch-sizes entry 0 must be a whole number >= 1"),
    (["--data-dir", "{t}/nothing"], "is not a directory"),
    (["--data-dir", "{t}/empty"], "SST-2/dev.tsv not found"),
    (["--out", "{m}/out"], "lies inside the input"),
    (["--model", "{t}/base"], "is not a sequence classifier"),
    (["--model", "{t}/missing"], "is not a model directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, glue_dir, capsys, argv, says):  # noqa: F811
    model = classifier(tmp_path / "m")
    tiny_model("bert", "base").save_pretrained(tmp_path / "base")
    (tmp_path / "empty").mkdir()
    options = {"--task": "sst2", "--data-dir": str(glue_dir), "--out": str(tmp_path / "out"), "--model": str(model)}
    for flag, value in zip(argv[::2], argv[1::2]):
        options[flag] = value.format(t=tmp_path, m=model)
    capsys.readouterr()
    before = sorted(p.name for p in model.iterdir())
    assert main(["ship", options.pop("--model"), *FAST, *[x for kv in options.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "out").exists() and not (model / "out").exists()
    assert sorted(p.name for p in model.iterdir()) == before
