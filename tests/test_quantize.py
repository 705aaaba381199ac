"""`prunelab quantize` and `export-onnx --quantize int8`: an INT8 graph, checked against FP32 before it is kept."""

from __future__ import annotations

import onnx
import pytest
import transformers

from conftest import tiny_model
from glue_fixtures import WORDS, glue_dir  # noqa: F401 (fixture)
from prunelab.cli import main
from prunelab.deploy import quantize as Q


def classifier(path):
    """A tiny BERT classifier with a WordPiece tokenizer over the fixture words."""
    tiny_model("bert", "cls").save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(path)
    return path


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("flags, weight_type", [({"avx2", "avx512_vnni"}, "QInt8"), ({"avx2", "avx_vnni"}, "QInt8"),
                                                ({"avx2"}, "QUInt8")])
def test_settings_follow_the_cpu(flags, weight_type):
    settings = Q.cpu_int8_settings(flags)
    assert settings["weight_type"] == weight_type and settings["reduce_range"] is False and settings["why"]
    assert settings["per_channel"] is (weight_type == "QInt8")  # signed weights get a scale per output channel


@pytest.mark.parametrize("command", ["quantize", "export-onnx"])
def test_an_int8_graph_is_written_smaller_and_close_to_fp32(tmp_path, command, capsys):
    model = classifier(tmp_path / "m")
    out = tmp_path / "m.int8.onnx"
    extra = ["--quantize", "int8"] if command == "export-onnx" else []
    assert main([command, str(model), "--out", str(out), *extra]) == 0
    said = capsys.readouterr().out
    assert "INT8" in said and "weights Q" in said
    ops = op_types(out)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops  # the linear layers really run in 8 bits
    assert main(["export-onnx", str(model), "--out", str(tmp_path / "fp32.onnx")]) == 0
    assert out.stat().st_size < (tmp_path / "fp32.onnx").stat().st_size


@pytest.mark.parametrize("form", ["pruned", "structured", "layer-dropped"])
def test_every_kind_of_model_quantizes(tmp_path, form):
    from prunelab import PruningConfig, prune
    from prunelab.pipelines.drop_layers import drop_and_save
    from prunelab.pipelines.prune_structured import prune_structured

    model, out = classifier(tmp_path / "m"), tmp_path / "made"
    if form == "pruned":
        prune(str(model), PruningConfig(sparsity=0.8), str(out))
    elif form == "structured":
        prune_structured(str(model), str(out), heads=0.5, ffn=0.5)
    else:
        drop_and_save(str(model), str(out), strategy="top", count=1)
    info = Q.quantize(str(out), tmp_path / "int8.onnx")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & op_types(tmp_path / "int8.onnx")
    assert info["bytes"] < info["fp32_bytes"] and info["max_abs_diff"] < 0.2 * info["output_scale"] + 1e-3


def test_an_onnx_file_is_quantized_and_checked_against_itself(tmp_path):
    model = classifier(tmp_path / "m")
    assert main(["export-onnx", str(model), "--out", str(tmp_path / "fp32.onnx")]) == 0
    info = Q.quantize(str(tmp_path / "fp32.onnx"), tmp_path / "int8.onnx")
    assert info["bytes"] < info["fp32_bytes"] and info["max_abs_diff"] < 0.2 * info["output_scale"]


def test_with_a_task_the_dev_scores_are_compared_and_a_large_drop_writes_nothing(tmp_path, glue_dir, monkeypatch, capsys):  # noqa: F811
    model = classifier(tmp_path / "m")
    info = Q.quantize(str(model), tmp_path / "ok.onnx", task="rte", data_dir=str(glue_dir))
    assert 0 <= info["dev_score_int8"] <= 100 and info["drop"] == info["dev_score_fp32"] - info["dev_score_int8"]
    monkeypatch.setattr(Q, "cpu_int8_settings", lambda flags=None, real=Q.cpu_int8_settings: real({"avx512_vnni"}))  # QInt8 first
    scores = iter([80.0, 70.0, 77.0])  # FP32, then INT8 with signed weights, then with unsigned: both over 2 points
    monkeypatch.setattr(Q, "dev_score", lambda *args, **kwargs: next(scores))
    capsys.readouterr()
    assert main(["quantize", str(model), "--task", "rte", "--data-dir", str(glue_dir), "--max-drop", "2",
                 "--out", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "by more than --max-drop 2 points (QInt8 weights 70.00, QUInt8 weights 77.00)" in err
    assert not (tmp_path / "bad.onnx").exists()


def test_where_the_recommended_weights_lose_too_much_unsigned_ones_are_tried(tmp_path, glue_dir, monkeypatch):  # noqa: F811
    model = classifier(tmp_path / "m")
    monkeypatch.setattr(Q, "cpu_int8_settings", lambda flags=None, real=Q.cpu_int8_settings: real({"avx512_vnni"}))
    seen = []

    def score(session, *args, **kwargs):  # FP32 80, signed INT8 weights 78.4, unsigned 79.5
        seen.append(session)
        return [80.0, 78.4, 79.5][len(seen) - 1]

    monkeypatch.setattr(Q, "dev_score", score)
    info = Q.quantize(str(model), tmp_path / "int8.onnx", task="rte", data_dir=str(glue_dir), max_drop=1.0)
    assert info["settings"]["weight_type"] == "QUInt8" and info["dev_score_int8"] == 79.5
    assert info["tried"] == [{"weight_type": "QInt8", "reduce_range": False, "dev_score": 78.4}]
    weights = {t.data_type for t in onnx.load(str(tmp_path / "int8.onnx")).graph.initializer if t.name.endswith("_quantized")}
    assert weights == {onnx.TensorProto.UINT8}  # the file kept is the unsigned one
    seen.clear()
    kept = Q.quantize(str(model), tmp_path / "first.onnx", task="rte", data_dir=str(glue_dir), max_drop=2.0)
    assert kept["settings"]["weight_type"] == "QInt8" and kept["tried"] == [] and len(seen) == 2  # within: no retry


@pytest.mark.parametrize("argv, says", [
    (["quantize", "{m}", "--out", "{t}/x.bin"], "must name a .onnx file"),
    (["quantize", "{t}/missing.onnx", "--out", "{t}/x.onnx"], "is not a file"),
    (["quantize", "{m}", "--out", "{m}/x.onnx"], "lies inside the input"),
    (["quantize", "{t}/fp32.onnx", "--task", "rte", "--out", "{t}/x.onnx"], "pass the model directory, not an .onnx file"),
    (["export-onnx", "{m}", "--task", "rte", "--out", "{t}/x.onnx"], "they go with --quantize int8"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, says):
    model = classifier(tmp_path / "m")
    (tmp_path / "fp32.onnx").write_bytes(b"")
    capsys.readouterr()
    assert main([a.format(m=model, t=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "x.onnx").exists()


def test_speed_shows_an_int8_file_with_its_bytes_and_what_it_is(tmp_path, capsys):
    import json

    model = classifier(tmp_path / "m")
    int8 = tmp_path / "m.int8.onnx"
    assert main(["quantize", str(model), "--out", str(int8)]) == 0
    capsys.readouterr()
    assert main(["speed", str(model), str(int8), "--batch-sizes", "1,2", "--seq-len", "8", "--repeats", "3",
                 "--json", str(tmp_path / "speed.json")]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "speed.json").read_text())
    weights = Q.cpu_int8_settings()["weight_type"]
    assert data["sizes"][str(int8)] == {"bytes": int8.stat().st_size,
                                        "kind": f"onnx int8 ({weights} weights, 14 quantized matmuls)"}
    assert data["sizes"][str(model)] == {"bytes": (model / "model.safetensors").stat().st_size, "kind": "pytorch fp32"}
    assert f"{int8.stat().st_size:,}  onnx int8 ({weights} weights" in printed
    timed = [(r["model"], r["batch"]) for r in data["rows"] if r["model"] == str(int8)]
    assert timed == [(str(int8), 1), (str(int8), 2)]  # timed in the same rounds as the PyTorch model and its copy
