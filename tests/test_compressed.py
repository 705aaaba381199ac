"""Compressed pruned checkpoints: bit-exact round trips, loading as any head class, plain copies, bad files."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import zstandard
from safetensors import safe_open
from safetensors.torch import save_file

import prunelab
from conftest import MODEL_TYPES, batch, tiny_model
from glue_fixtures import glue_dir, save_tiny  # noqa: F401
from prunelab import Pruner, PruningConfig
from prunelab.cli import main
from prunelab.artifact import COMPRESSED_FILE
from prunelab.codec import join_planes, read_compressed, split_planes, write_compressed
from prunelab.errors import InputError

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
    for argv in argvs:  # decompress too: config.json bounds its decoding, and a copy that disagrees loads nowhere
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


# -- untrusted files: every allocation bounded before it happens ------------------------------------

FFN_IN = "bert.encoder.layer.0.intermediate.dense.weight"  # sparse, (37, 32) in save_tiny's config.json


@functools.cache
def zero_frame(size: int, declare: bool = True) -> bytes:
    """A zstd frame of `size` zero bytes, a few KB however large `size` is (compressed 4 MiB at a time)."""
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=declare).compressobj(size=size if declare else -1)
    chunk, parts = memoryview(bytes(1 << 22)), []
    for start in range(0, size, len(chunk)):
        parts.append(compressor.compress(chunk[: size - start]))
    return b"".join(parts) + compressor.flush()


def frame(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def compressed_artifact(tmp_path: Path, codec: str = "zstd") -> Path:
    source = save_tiny(tmp_path / "m")
    assert main(["prune", str(source), "--sparsity", "0.5", "--compress", "--codec", codec, "--out", str(tmp_path / "small")]) == 0
    return tmp_path / "small"


def rewrite(path: Path, edit) -> None:
    """Rewrite the compressed file `path` after `edit(table, tensors)` changed its tensor table and stored parts."""
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    table = json.loads(metadata["tensors"])
    edit(table, tensors)
    save_file(tensors, str(path), metadata={**metadata, "tensors": json.dumps(table)})


def sparse(key: str, shape: list[int], *, bitmask: bytes | None = None, values: bytes = b""):
    """An edit giving `key` an empty sparse entry of `shape` whose zstd parts fit it (the checksum does not)."""
    def edit(table, tensors):
        table[key] = {**table[FFN_IN], "shape": shape, "nnz": 0}
        tensors[f"{key}::bitmask"] = frame(zero_frame(math.prod(shape[:-1]) * math.ceil(shape[-1] / 8))
                                           if bitmask is None else bitmask)
        tensors[f"{key}::values"] = frame(zstandard.ZstdCompressor().compress(values))
    return edit


CHILD = """
import sys
import prunelab
from prunelab.artifact import COMPRESSED_FILE
from prunelab.codec import read_compressed
try:
    {call}
    print("LOADED")
except prunelab.errors.InputError as err:
    print("REFUSED", err)
print("PEAK_KB", next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
# VmHWM, not getrusage's ru_maxrss: subprocess starts the child by vfork, and ru_maxrss then carries the pytest
# process's own peak, which depends on the tests that ran before.


@pytest.mark.parametrize("how, call, says", [
    # 100000 x 100000 float32: 40 GB dense, a 1.25 GB bitmask in a 38 KB frame; config.json gives (37, 32)
    ("shape", "prunelab.from_pretrained(sys.argv[1])", f"tensor {FFN_IN!r} has shape (100000, 100000) but its config.json gives (37, 32)"),
    # the header's (37, 32) needs a 148-byte bitmask; the frame declares 1.25 GB (no config.json involved)
    ("frame", "read_compressed(sys.argv[1] + '/' + COMPRESSED_FILE)",
     f"tensor {FFN_IN!r}: its bitmask frame declares 1250000000 bytes but shape (37, 32)"),
])
def test_a_small_crafted_file_is_refused_before_it_allocates(tmp_path, how, call, says):
    small = compressed_artifact(tmp_path)
    huge = zero_frame(100_000 * math.ceil(100_000 / 8))
    if how == "shape":
        rewrite(small / COMPRESSED_FILE, sparse(FFN_IN, [100_000, 100_000], bitmask=huge))
    else:
        rewrite(small / COMPRESSED_FILE, lambda table, tensors: tensors.update({f"{FFN_IN}::bitmask": frame(huge)}))
    assert (small / COMPRESSED_FILE).stat().st_size < 200_000
    child = subprocess.run([sys.executable, "-c", CHILD.format(call=call), str(small)], capture_output=True, text=True,
                           timeout=300)
    lines = dict(line.split(" ", 1) for line in child.stdout.splitlines() if line.startswith(("REFUSED", "PEAK_KB")))
    assert "REFUSED" in lines and says in lines["REFUSED"] and COMPRESSED_FILE in lines["REFUSED"], child.stdout + child.stderr
    assert int(lines["PEAK_KB"]) < 1_500_000, f"peak RSS {int(lines['PEAK_KB']) / 1e6:.2f} GB"  # torch + transformers: ~0.5


@pytest.mark.parametrize("edit, says", [
    (lambda table, tensors: tensors.update({f"{FFN_IN}::bitmask": frame(zero_frame(37 * 4 + 1))}),
     "its bitmask frame declares 149 bytes but shape (37, 32) and nnz"),
    (lambda table, tensors: tensors.update({f"{FFN_IN}::values": frame(zero_frame(10_000))}),
     "its values frame declares 10000 bytes but shape (37, 32) and nnz"),
    (lambda table, tensors: table[FFN_IN].update(nnz=37 * 32 + 1), "nnz 1185 is not an integer in 0..1184"),
    (lambda table, tensors: table[FFN_IN].update(nnz=-1), "nnz -1 is not an integer in 0..1184"),
    (lambda table, tensors: table[FFN_IN].update(nnz="600"), "nnz '600' is not an integer"),
    (lambda table, tensors: table[FFN_IN].update(dtype="float8"), "dtype 'float8' is not one of float32, float16"),
    (lambda table, tensors: table[FFN_IN].update(shape=[-37, -32]), "shape [-37, -32] is not a list of non-negative integers"),
    (lambda table, tensors: table[FFN_IN].update(shape=[37.0, 32]), "shape [37.0, 32] is not a list of non-negative integers"),
    (lambda table, tensors: table[FFN_IN].update(layout="coo"), "layout 'coo' with codec 'zstd': allowed are dense or sparse"),
])
def test_entries_and_frames_that_disagree_are_refused_naming_the_tensor(tmp_path, edit, says):
    path = compressed_artifact(tmp_path) / COMPRESSED_FILE
    rewrite(path, edit)
    with pytest.raises(InputError) as err:
        read_compressed(path)
    assert f"{path}: tensor {FFN_IN!r}: {says}" in str(err.value) and "\n" not in str(err.value)


def test_a_frame_without_a_declared_size_decodes_into_a_buffer_of_the_size_its_header_implies(tmp_path):
    path = compressed_artifact(tmp_path) / COMPRESSED_FILE
    expected, masks = read_compressed(path)
    undeclared = zstandard.ZstdCompressor(write_content_size=False)
    planes = zstandard.ZstdDecompressor().decompress  # the stored frames declare their sizes

    def strip_sizes(table, tensors):
        for part in ("bitmask", "values"):
            content = planes(tensors[f"{FFN_IN}::{part}"].numpy().tobytes())
            tensors[f"{FFN_IN}::{part}"] = frame(undeclared.compress(content))
            assert zstandard.frame_content_size(tensors[f"{FFN_IN}::{part}"].numpy().tobytes()) == -1

    rewrite(path, strip_sizes)
    again, masks_again = read_compressed(path)
    assert torch.equal(again[FFN_IN], expected[FFN_IN]) and torch.equal(masks_again[FFN_IN], masks[FFN_IN])
    rewrite(path, lambda table, tensors: tensors.update({f"{FFN_IN}::bitmask": frame(zero_frame(10_000_000, declare=False))}))
    with pytest.raises(InputError, match=f"tensor {FFN_IN!r}: cannot decode"):  # more than 148 bytes: not decoded
        read_compressed(path)


@pytest.mark.parametrize("edit, says", [
    (sparse(FFN_IN, [40, 32]), f"tensor {FFN_IN!r} has shape (40, 32) but its config.json gives (37, 32)"),
    (sparse("bert.encoder.layer.7.intermediate.dense.weight", [37, 32]),
     "tensor 'bert.encoder.layer.7.intermediate.dense.weight' is not a tensor of the model its config.json describes"),
])
def test_a_tensor_that_disagrees_with_config_json_is_refused_before_anything_is_decoded(tmp_path, capsys, monkeypatch, edit, says):
    small = compressed_artifact(tmp_path)
    rewrite(small / COMPRESSED_FILE, edit)
    decoded = []
    decode = prunelab.codec.decode
    monkeypatch.setattr(prunelab.codec, "decode", lambda key, *args: decoded.append(key) or decode(key, *args))
    for load in (prunelab.from_pretrained, prunelab.artifact.saved_masks):  # saved_masks: inspect's and finetune's
        with pytest.raises(InputError, match="the config and the weights belong to different models") as err:
            load(str(small))
        assert says in str(err.value) and str(small / COMPRESSED_FILE) in str(err.value)
    capsys.readouterr()
    assert main(["decompress", str(small), "--out", str(tmp_path / "x")]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert decoded == []


def test_decompress_without_config_json_is_refused_before_writing(tmp_path, capsys):
    small = compressed_artifact(tmp_path)
    (small / "config.json").unlink()
    capsys.readouterr()
    assert main(["decompress", str(small), "--out", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert f"{small} has no config.json" in err and err.count("\n") == 1, err
    assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize("values", ["lossless", "fp16"])
def test_the_model_card_says_bit_identical_only_of_lossless_values(tmp_path, values):
    small = compressed_artifact(tmp_path)
    assert main(["compress", str(small), "--values", values, "--out", str(tmp_path / values)]) == 0
    card = (tmp_path / values / "README.md").read_text()
    error = json.loads((tmp_path / values / "prunelab.json").read_text())["compressed"]["max_abs_error"]
    if values == "lossless":
        assert "bit-identical tensors" in card and error == 0
    else:
        assert "bit-identical" not in card and error > 0
        assert f"lossy: the pruned weights' kept values are stored as fp16, within {error:.3g}" in card
