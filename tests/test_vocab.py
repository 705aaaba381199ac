"""`prunelab prune-vocab`: the cut model and its re-indexed tokenizer load in plain transformers and compute, on text
made of kept tokens, what the uncut model computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import SentencePieceUnigramTokenizer
from tokenizers.implementations import ByteLevelBPETokenizer
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from conftest import CONFIGS, VOCAB, tiny_model
from glue_fixtures import write_glue
from prunelab.cli import main
from prunelab.data.texts import load_texts
from prunelab.deploy.vocab import prune_vocab
from prunelab.deploy.vocab_tokenizer import check_kind

TEXTS = load_texts()  # the packaged sample: 100 English sentences
CORPUS, OTHER = TEXTS[:30], TEXTS[30:]
WORDS = [f"w{i}" for i in range(VOCAB - 5)]
WORDPIECE = {"bert": transformers.BertTokenizer, "distilbert": transformers.DistilBertTokenizer,
             "electra": transformers.ElectraTokenizer}
XLNET_SPECIALS = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]


def tokenizer_for(model_type: str, path: Path):
    """A tokenizer of `model_type`'s own class and kind: WordPiece over the words w0..w58, byte-level BPE (RoBERTa)
    and Unigram (XLNet) trained on the packaged sample."""
    if model_type in WORDPIECE:
        vocab = path / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        return WORDPIECE[model_type](vocab=str(vocab))
    if model_type == "roberta":
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(TEXTS, vocab_size=600, min_frequency=2,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
        model = json.loads(bpe.to_str())["model"]
        return transformers.RobertaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(TEXTS, vocab_size=300, special_tokens=XLNET_SPECIALS, unk_token="<unk>",
                                show_progress=False)
    pieces = [tuple(p) for p in json.loads(unigram.to_str())["model"]["vocab"]]
    return transformers.XLNetTokenizer(vocab=pieces, unk_id=0)


def save_model(path: Path, model_type: str = "bert", head: str = "cls") -> Path:
    """A tiny model of `model_type` with a head and its own kind of tokenizer, saved as a model directory."""
    path.mkdir(parents=True)
    tokenizer = tokenizer_for(model_type, path)
    config = CONFIGS[model_type]()
    config.vocab_size = len(tokenizer)
    if model_type == "roberta":
        config.max_position_embeddings = 130
    torch.manual_seed(0)
    cls = (transformers.XLNetLMHeadModel if model_type == "xlnet" else transformers.AutoModelForMaskedLM) \
        if head == "mlm" else transformers.AutoModelForSequenceClassification
    model = cls(config) if cls is transformers.XLNetLMHeadModel else cls.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def corpus_file(tmp_path: Path, lines=CORPUS) -> Path:
    file = tmp_path / "corpus.txt"
    file.write_text("\n".join(lines) + "\n")
    return file


def wordpiece_text(words) -> str:
    return " ".join(words)


def outputs(path: Path, texts: list[str], cls=AutoModelForSequenceClassification):
    """The logits (or first output) plain transformers computes from `path` with its own tokenizer, and the ids."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = cls.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch)[0], batch["input_ids"]


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_the_cut_model_computes_the_same_logits_on_kept_text(tmp_path, model_type):
    source = save_model(tmp_path / "model", model_type)
    lines = [wordpiece_text(WORDS[i:i + 5]) for i in range(0, 20, 5)] if model_type in WORDPIECE else CORPUS
    info = prune_vocab(str(source), tmp_path / "cut", corpus=[str(corpus_file(tmp_path, lines))])
    out = tmp_path / "cut"
    original, cut = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(out)
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.vocab_size == len(cut) == info["vocab_after"] < info["vocab_before"] == len(original)
    # every special token kept, under its new id, in the tokenizer and in the config alike
    assert set(cut.all_special_tokens) == set(original.all_special_tokens)
    assert cut.pad_token_id == config.pad_token_id == cut.convert_tokens_to_ids(original.pad_token)
    kept = sorted(original.convert_tokens_to_ids(t) for t in cut.get_vocab())
    assert [cut.convert_tokens_to_ids(original.convert_ids_to_tokens(i)) for i in kept] == list(range(len(kept)))
    # kept text: the same tokens under new ids, and the very same logits
    want, old_ids = outputs(source, lines[:3])
    got, new_ids = outputs(out, lines[:3])
    assert torch.equal(torch.tensor(kept)[new_ids], old_ids)
    assert got.shape == want.shape and torch.equal(got, want)
    assert (out / "model.safetensors").stat().st_size < (source / "model.safetensors").stat().st_size
    assert info["file_bytes_after"] == (out / "model.safetensors").stat().st_size
    assert info["tokenization_checked"]["texts"] == len(lines) and info["max_abs_diff"] == 0.0
    assert json.loads((out / "prunelab.json").read_text())["vocab_cut"]["vocab_after"] == info["vocab_after"]
    AutoModel.from_pretrained(out)  # another head class loads it too
    if model_type in WORDPIECE:
        return
    # a text with removed tokens: byte-level BPE spells it in kept pieces (no text is lost); Unigram segments it in
    # kept pieces, a character with none left becoming the unknown token
    text = next(t for t in OTHER if any(i not in set(kept) for i in original(t)["input_ids"]))
    pieces = cut(text)["input_ids"]
    assert pieces != [kept.index(i) if i in kept else -1 for i in original(text)["input_ids"]]
    if model_type == "roberta":
        assert cut.unk_token_id not in pieces and cut.decode(pieces, skip_special_tokens=True) == text
    else:
        assert cut.convert_tokens_to_ids(cut.unk_token) in pieces or cut.decode(pieces, skip_special_tokens=True) == text


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlnet"])
def test_an_mlm_keeps_its_decoder_and_bias_rows(tmp_path, model_type):
    source = save_model(tmp_path / "model", model_type, head="mlm")
    lines = [wordpiece_text(WORDS[:12])] if model_type in WORDPIECE else CORPUS[:10]
    info = prune_vocab(str(source), tmp_path / "cut", corpus=[str(corpus_file(tmp_path, lines))])
    cls = transformers.XLNetLMHeadModel if model_type == "xlnet" else transformers.AutoModelForMaskedLM
    want, _ = outputs(source, lines[:2], cls)
    got, _ = outputs(tmp_path / "cut", lines[:2], cls)
    original, cut = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(tmp_path / "cut")
    kept = sorted(original.convert_tokens_to_ids(t) for t in cut.get_vocab())
    assert got.shape[-1] == info["vocab_after"] == len(kept)
    # the decoder's kept rows and bias: the same logits, up to the rounding of a matrix product of another width
    assert (got - want[..., kept]).abs().max() < 1e-5 and torch.equal(got.argmax(-1), want[..., kept].argmax(-1))
    model = cls.from_pretrained(tmp_path / "cut")
    assert model.get_output_embeddings().weight.shape[0] == len(kept)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied


def test_a_removed_word_becomes_the_unknown_token_and_the_dev_report_counts_it(tmp_path, capsys):
    source = save_model(tmp_path / "model", "bert")
    glue = write_glue(tmp_path / "glue", n_train=4, n_dev=8)
    assert main(["prune-vocab", str(source), "--task", "SST-2", "--data-dir", str(glue), "--out", str(tmp_path / "cut")]) == 0
    printed = capsys.readouterr().out
    info = json.loads((tmp_path / "cut" / "prunelab.json").read_text())["vocab_cut"]
    train = [line.split("\t")[0] for line in (glue / "SST-2" / "train.tsv").read_text().splitlines()[1:]]
    used = {w for line in train for w in line.split()}
    assert info["kept_used"] == len(used) and info["vocab_after"] == len(used) + 5  # the five special tokens
    removed = [w for w in WORDS if w not in used]
    cut = AutoTokenizer.from_pretrained(tmp_path / "cut")
    ids = cut(f"{removed[0]} {sorted(used)[0]}")["input_ids"]
    assert ids[1] == cut.unk_token_id and ids[2] != cut.unk_token_id
    dev = [line.split("\t")[0].split() for line in (glue / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    hits = sum(w not in used for words in dev for w in words)
    assert hits > 0 and info["dev"]["dev"] == {
        "examples": len(dev), "tokens": sum(map(len, dev)), "removed_tokens": hits, "unk_before": 0,
        "unk_after": hits, "examples_affected": sum(any(w not in used for w in words) for words in dev),
        "tokens_after": sum(map(len, dev))}
    assert f"dev: {hits:,} of {sum(map(len, dev)):,} tokens" in printed and "-> " in printed


def test_min_count_drops_rare_tokens(tmp_path):
    source = save_model(tmp_path / "model", "bert")
    lines = ["w1 w1 w2", "w1 w3 w3"]  # w1 three times, w3 twice, w2 once
    once = prune_vocab(str(source), tmp_path / "once", corpus=[str(corpus_file(tmp_path, lines))])
    twice = prune_vocab(str(source), tmp_path / "twice", corpus=[str(corpus_file(tmp_path, lines))], min_count=2)
    assert (once["kept_used"], twice["kept_used"], twice["used_below_min_count"]) == (3, 2, 1)
    assert set(AutoTokenizer.from_pretrained(tmp_path / "twice").get_vocab()) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                                   "[MASK]", "w1", "w3"}


def test_a_pruned_artifacts_embedding_mask_is_cut_with_its_rows(tmp_path):
    from prunelab import from_pretrained

    source = save_model(tmp_path / "model", "bert")
    assert main(["prune", str(source), "--sparsity", "0.5", "--out", str(tmp_path / "pruned")]) == 0
    prune_vocab(str(tmp_path / "pruned"), tmp_path / "cut", corpus=[str(corpus_file(tmp_path, ["w1 w2 w30", "w7"]))])
    loaded = from_pretrained(tmp_path / "cut")
    name = "embeddings.word_embeddings.weight"
    weight, mask = loaded.model.get_parameter("bert." + name), loaded.masks[name]
    assert mask.shape == weight.shape == (9, 32) and bool((weight[~mask] == 0).all()) and bool(mask.any())
    before = from_pretrained(tmp_path / "pruned")
    kept = [0, 1, 2, 3, 4, 6, 7, 12, 35]  # [PAD] [UNK] [CLS] [SEP] [MASK] w1 w2 w7 w30
    assert torch.equal(mask, before.masks[name][kept]) and torch.equal(weight, before.model.get_parameter("bert." + name)[kept])
    info = json.loads((tmp_path / "cut" / "prunelab.json").read_text())
    assert info["config"]["sparsity"] == 0.5 and info["vocab_cut"]["vocab_after"] == 9  # the pruning record stays


def test_a_cut_model_prunes_structurally_and_by_magnitude(tmp_path):
    from prunelab import from_pretrained

    source = save_model(tmp_path / "model", "bert")
    prune_vocab(str(source), tmp_path / "cut", corpus=[str(corpus_file(tmp_path, [wordpiece_text(WORDS[:20])]))])
    assert main(["prune-structured", str(tmp_path / "cut"), "--heads", "0.5", "--out", str(tmp_path / "heads")]) == 0
    heads = from_pretrained(tmp_path / "heads").model
    assert heads.get_input_embeddings().num_embeddings == heads.config.vocab_size == 25  # 20 words, 5 special
    assert main(["prune", str(tmp_path / "cut"), "--sparsity", "0.5", "--out", str(tmp_path / "pruned")]) == 0
    pruned = from_pretrained(tmp_path / "pruned")
    weight = pruned.model.get_input_embeddings().weight
    assert pruned.masks["embeddings.word_embeddings.weight"].shape == weight.shape == (25, 32)


@pytest.mark.slow  # the ONNX export takes about ten seconds
def test_a_cut_model_exports_to_onnx(tmp_path):
    import numpy as np
    import onnxruntime

    from prunelab.deploy.onnx import export_onnx

    source = save_model(tmp_path / "model", "bert")
    prune_vocab(str(source), tmp_path / "cut", corpus=[str(corpus_file(tmp_path, [wordpiece_text(WORDS[:20])]))])
    export_onnx(str(tmp_path / "cut"), tmp_path / "cut.onnx")
    want, ids = outputs(tmp_path / "cut", [wordpiece_text(WORDS[3:9])])
    session = onnxruntime.InferenceSession(str(tmp_path / "cut.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())})[0]
    assert got.shape == want.shape and np.abs(got - want.numpy()).max() < 1e-4


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    source = save_model(tmp_path / "model", "bert")
    corpus, empty = corpus_file(tmp_path), tmp_path / "empty.txt"
    empty.write_text("\n \n")
    glue = write_glue(tmp_path / "glue", n_train=4, n_dev=4)
    out = tmp_path / "out"
    cases = [
        ([], "either --task T"),
        (["--task", "SST-2", "--data-dir", str(glue), "--corpus", str(corpus)], "not both"),
        (["--task", "SST-3", "--data-dir", str(glue)], "unknown GLUE task 'SST-3'"),
        (["--corpus", str(empty)], "has no text"),
        (["--corpus", str(tmp_path / "missing.txt")], "not found"),
        (["--corpus", str(corpus), "--min-count", "0"], "--min-count 0 must be an integer >= 1"),
        (["--corpus", str(corpus), "--data-dir", str(glue)], "--data-dir goes with --task"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["prune-vocab", str(source), *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (message, err)
    inside = source / "cut"
    assert main(["prune-vocab", str(source), "--corpus", str(corpus), "--out", str(inside)]) == 2
    err = capsys.readouterr().err
    assert "lies inside the input" in err and err.count("\n") == 1
    no_tokenizer = tmp_path / "bare"
    tiny_model("bert", "cls").save_pretrained(no_tokenizer)
    assert main(["prune-vocab", str(no_tokenizer), "--corpus", str(corpus), "--out", str(out)]) == 2
    assert "has no tokenizer files" in capsys.readouterr().err
    assert not out.exists() and not inside.exists() and not list(tmp_path.glob(".out.*"))


def test_a_tokenizer_kind_that_cannot_be_cut_is_refused_by_name():
    with pytest.raises(ValueError, match="cannot re-index a BPE tokenizer with dropout"):
        check_kind({"model": {"type": "BPE", "dropout": 0.1, "vocab": {}, "merges": []}})
    with pytest.raises(ValueError, match="cannot re-index a Mystery tokenizer"):
        check_kind({"model": {"type": "Mystery", "vocab": {}}})


@pytest.mark.slow
def test_minilm_cut_to_sst2_training_text():
    """The packaged MiniLM cut to the tokens of SST-2's training text ($PRUNELAB_DATA or ../shared/data)."""
    import os

    data = Path(os.environ.get("PRUNELAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "glue"
    if not (data / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"no SST-2 under {data}")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        info = prune_vocab("minilm", Path(tmp) / "cut", task="SST-2", data_dir=str(data))
    assert info["vocab_before"] == 30522 and info["vocab_after"] == info["kept_used"] + info["kept_special"] < 15000
    assert info["tokenization_checked"]["texts"] == info["texts"] and info["max_abs_diff"] == 0.0
    assert info["file_bytes_after"] / info["file_bytes_before"] < 0.75
    dev = info["dev"]["dev"]
    assert 0 < dev["removed_tokens"] < 0.05 * dev["tokens"] and dev["unk_after"] >= dev["unk_before"]
