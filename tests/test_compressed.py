"""Compressed pruned checkpoints: bit-exact round trips, loading as any head class, plain copies, bad files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

import prunelab
from conftest import MODEL_TYPES, batch, tiny_model
from glue_fixtures import glue_dir, save_tiny  # noqa: F401
from prunelab import Pruner, PruningConfig
from prunelab.cli import main
from prunelab.compressed import COMPRESSED_FILE, join_planes, read_compressed, split_planes, write_compressed

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pruned_state(model_type: str, dtype: torch.dtype, sparsity: float, scope: str):
    """A tiny model of `model_type` in `dtype`, pruned by prunelab: its state dict and masks by state-dict key."""
    model = tiny_model(model_type, "mlm").to(dtype)
    pruner = Pruner(model, PruningConfig(sparsity=sparsity, scope=scope))
    pruner.update_masks(sparsity)
    state = model.state_dict()
    return state, {t.param_name: pruner.masks[t.name] for t in pruner.targets}


@pytest.mark.parametrize("codec", ["zstd", "none"])
@pytest.mark.parametrize("scope", ["matrix", "global"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_round_trip_is_bit_exact(tmp_path, model_type, dtype, sparsity, scope, codec):
    state, masks = pruned_state(model_type, dtype, sparsity, scope)
    write_compressed(state, masks, tmp_path / COMPRESSED_FILE, codec)
    tensors, decoded_masks = read_compressed(tmp_path / COMPRESSED_FILE)
    assert tensors.keys() == state.keys()
    for key, value in state.items():  # bytes, so -0.0, NaN payloads and the dtype all count
        assert tensors[key].dtype == value.dtype and torch.equal(tensors[key].contiguous().view(torch.uint8),
                                                                 value.contiguous().view(torch.uint8)), key
    assert decoded_masks.keys() == masks.keys() and all(torch.equal(decoded_masks[k], masks[k]) for k in masks)


def test_value_planes_invert_for_every_float_format():
    for dtype in DTYPES:
        values = torch.cat([torch.randn(997) * 0.03, torch.tensor([0.0, -0.0, 1e-30, -65504.0])]).to(dtype)
        bits = {torch.float32: torch.int32}.get(dtype, torch.int16)
        assert torch.equal(join_planes(split_planes(values), dtype, values.numel()).view(bits), values.view(bits))


def test_zstd_beats_the_plain_layout_and_the_dense_checkpoint(tmp_path):
    state, masks = pruned_state("bert", torch.float32, 0.9, "matrix")
    sizes = {}
    for codec in ("zstd", "none"):
        write_compressed(state, masks, tmp_path / codec, codec)
        sizes[codec] = (tmp_path / codec).stat().st_size
    save_file({k: v.clone() for k, v in state.items()}, str(tmp_path / "dense"))
    assert sizes["zstd"] < sizes["none"] < (tmp_path / "dense").stat().st_size


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_prune_compress_loads_bit_identical_as_any_head_class(tmp_path, model_type):
    source = tmp_path / "model"
    tiny_model(model_type, "mlm").save_pretrained(source)
    assert main(["prune", str(source), "--sparsity", "0.7", "--out", str(tmp_path / "plain")]) == 0
    assert main(["prune", str(source), "--sparsity", "0.7", "--compress", "--out", str(tmp_path / "small")]) == 0
    files = {p.name for p in (tmp_path / "small").iterdir()}
    assert {COMPRESSED_FILE, "config.json", "prunelab.json", "README.md"} <= files and "model.safetensors" not in files
    plain, small = prunelab.from_pretrained(tmp_path / "plain"), prunelab.from_pretrained(tmp_path / "small")
    assert type(small.model) is type(plain.model)
    a, b = plain.model.state_dict(), small.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)
    assert small.masks.keys() == plain.masks.keys() and all(torch.equal(small.masks[k], plain.masks[k]) for k in plain.masks)
    base = prunelab.from_pretrained(tmp_path / "small", model_class=transformers.AutoModel).model  # another head class
    inputs = batch(model_type)
    with torch.no_grad():
        assert torch.equal(base(**inputs).last_hidden_state, transformers.AutoModel.from_pretrained(tmp_path / "plain")(**inputs).last_hidden_state)
    card = (tmp_path / "small" / "README.md").read_text()
    assert "Pruned from" in card and "of the dense model.safetensors" in card and "prunelab.from_pretrained" in card


def test_decompress_gives_a_copy_plain_transformers_loads(tmp_path):
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.5", "--out", str(tmp_path / "plain")]) == 0
    assert main(["compress", str(tmp_path / "plain"), "--out", str(tmp_path / "small")]) == 0
    assert main(["decompress", str(tmp_path / "small"), "--out", str(tmp_path / "again")]) == 0
    for name in ("model.safetensors", "masks.safetensors"):
        with safe_open(str(tmp_path / "plain" / name), framework="pt") as f, safe_open(str(tmp_path / "again" / name), framework="pt") as g:
            assert set(f.keys()) == set(g.keys()) and all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())
    a = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "again")
    b = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "plain")
    with torch.no_grad():
        assert torch.equal(a(**batch()).logits, b(**batch()).logits)
    assert main(["inspect", str(tmp_path / "small")]) == 0


def test_a_model_without_masks_is_compressed_by_its_zeros(tmp_path):
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.6", "--out", str(tmp_path / "p")]) == 0
    (tmp_path / "p" / "masks.safetensors").unlink()
    (tmp_path / "p" / "prunelab.json").unlink()
    assert main(["compress", str(tmp_path / "p"), "--out", str(tmp_path / "small")]) == 0
    loaded = prunelab.from_pretrained(tmp_path / "small")
    assert all(bool((loaded.model.base_model.get_parameter(n)[~m] == 0).all()) for n, m in loaded.masks.items())
    assert 0.55 < 1 - sum(int(m.sum()) for m in loaded.masks.values()) / sum(m.numel() for m in loaded.masks.values())


def test_finetune_takes_a_compressed_model_and_holds_its_masks(tmp_path, glue_dir):  # noqa: F811
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.5", "--compress", "--out", str(tmp_path / "small")]) == 0
    assert main(["finetune", str(tmp_path / "small"), "--task", "rte", "--data-dir", str(glue_dir), "--lr", "1e-3",
                 "--epochs", "1", "--batch-size", "4", "--max-seq-len", "16", "--out", str(tmp_path / "ft")]) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["sparsity"] == pytest.approx(0.5, abs=2e-3)


def damage(path: Path, how: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    table = json.loads(metadata["tensors"])
    key = next(k for k, e in table.items() if e["layout"] == "sparse")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return
    if how == "config":  # the tensors no longer fit the architecture the config describes
        config = path.parent / "config.json"
        config.write_text(config.read_text().replace('"intermediate_size": 37', '"intermediate_size": 38'))
        return
    if how == "tampered":
        frame = tensors[f"{key}::values"].clone()
        frame[-1] ^= 0xFF
        tensors[f"{key}::values"] = frame
    elif how == "popcount":
        table[key]["nnz"] += 1
    elif how == "version":
        metadata["version"] = "99"
    elif how == "tampered-dense":  # a tensor stored as it is: only its checksum can tell
        dense = next(k for k, e in table.items() if e["layout"] == "dense" and e["dtype"] == "float32")
        tensors[dense] = tensors[dense].clone()
        tensors[dense].view(-1)[0] += 1.0
    elif how == "shape":
        table[key]["shape"] = [table[key]["shape"][0] + 1] + table[key]["shape"][1:]
    metadata["tensors"] = json.dumps(table)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("how, says", [
    ("truncated", "is truncated or not safetensors"),
    ("tampered", "tensor 'bert.embeddings.word_embeddings.weight'"),
    ("popcount", "the bitmask keeps"),
    ("tampered-dense", "the checksum of the decoded tensor fails"),
    ("version", "has format version '99'; this prunelab reads versions 1, 2"),
    ("shape", "tensor 'bert.embeddings.word_embeddings.weight'"),
    ("config", "has shape (37,) but its config.json gives (38,)"),
])
def test_damaged_files_are_one_line_errors_naming_file_and_tensor(tmp_path, capsys, how, says):
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.5", "--compress", "--codec", "none" if how == "popcount" else "zstd",
                 "--out", str(tmp_path / "small")]) == 0
    damage(tmp_path / "small" / COMPRESSED_FILE, how)
    capsys.readouterr()
    argvs = [["inspect", str(tmp_path / "small")], ["decompress", str(tmp_path / "small"), "--out", str(tmp_path / "x")]]
    for argv in argvs[:1] if how == "config" else argvs:  # decompress copies tensors; it needs no config
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and (COMPRESSED_FILE in err or how == "config") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_format_version_1_still_reads_and_its_checksums_are_checked(tmp_path, capsys):
    """Version 1 recorded the SHA-256 of each decoded dense tensor (``sha256``) where version 2 records a CRC-32."""
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.5", "--compress", "--out", str(tmp_path / "small")]) == 0
    path = tmp_path / "small" / COMPRESSED_FILE
    dense, masks = read_compressed(path)
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    table = json.loads(metadata["tensors"])
    for key, entry in table.items():
        del entry["crc32"]
        entry["sha256"] = hashlib.sha256(dense[key].contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    save_file(tensors, str(path), metadata={**metadata, "version": "1", "tensors": json.dumps(table)})
    again, masks_again = read_compressed(path)
    assert all(torch.equal(again[k].view(torch.uint8), v.view(torch.uint8)) for k, v in dense.items())
    assert all(torch.equal(masks_again[k], m) for k, m in masks.items())
    key = next(k for k, e in table.items() if e["layout"] == "sparse")
    table[key]["sha256"] = "0" * 64
    save_file(tensors, str(path), metadata={**metadata, "version": "1", "tensors": json.dumps(table)})
    assert main(["inspect", str(tmp_path / "small")]) == 2
    assert f"tensor {key!r}: the checksum of the decoded tensor fails" in capsys.readouterr().err


def test_decompress_of_a_plain_directory_is_refused(tmp_path, capsys):
    source = save_tiny(tmp_path / "m")
    assert main(["decompress", str(source), "--out", str(tmp_path / "x")]) == 2
    assert "is not a compressed artifact" in capsys.readouterr().err and not (tmp_path / "x").exists()
    shutil.rmtree(source)


@pytest.mark.parametrize("values", ["fp16", "bf16"])
def test_lossy_values_report_their_largest_error_and_are_smaller(tmp_path, capsys, values):
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.5", "--compress", "--out", str(tmp_path / "lossless")]) == 0
    assert main(["compress", str(tmp_path / "lossless"), "--values", values, "--out", str(tmp_path / "lossy")]) == 0
    assert f"values {values} (largest absolute error" in capsys.readouterr().out
    info = json.loads((tmp_path / "lossy" / "prunelab.json").read_text())["compressed"]
    exact, lossy = prunelab.from_pretrained(tmp_path / "lossless"), prunelab.from_pretrained(tmp_path / "lossy")
    a, b = exact.model.state_dict(), lossy.model.state_dict()
    error = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert 0 < error == pytest.approx(info["max_abs_error"]) and b["bert.embeddings.word_embeddings.weight"].dtype == torch.float32
    assert info["compressed_bytes"] < (tmp_path / "lossless" / COMPRESSED_FILE).stat().st_size
    assert all(torch.equal(exact.masks[k], lossy.masks[k]) for k in exact.masks)


def test_analyze_and_every_head_class_read_a_compressed_artifact(tmp_path):
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.5", "--compress", "--out", str(tmp_path / "small")]) == 0
    assert main(["prune", str(source), "--sparsity", "0.5", "--out", str(tmp_path / "plain")]) == 0
    assert main(["analyze", "mask-diff", str(tmp_path / "small"), str(tmp_path / "plain"), "--no-figure",
                 "--out", str(tmp_path / "diff")]) == 0
    assert json.loads((tmp_path / "diff" / "mask_diff.json").read_text())["result"]["overall"]["a_only"] == 0
    classifier = prunelab.from_pretrained(tmp_path / "small", model_class=transformers.AutoModelForSequenceClassification,
                                          num_labels=3).model
    assert type(classifier).__name__ == "BertForSequenceClassification" and classifier.config.num_labels == 3
