"""Small GLUE files in the download_glue_data.py layout, every task in its own format, for tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import transformers

from conftest import VOCAB, tiny_model

WORDS = [f"w{i}" for i in range(VOCAB - 5)]


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _rows(task: str, rng: random.Random, n: int) -> list[list[str]]:
    rows = []
    for i in range(n):
        a, b, flag = sentence(rng), sentence(rng), i % 2
        if task == "CoLA":  # no header: source, label, original label, sentence
            rows.append(["gj04", str(flag), "" if flag else "*", a])
        elif task == "SST-2":
            rows.append([a, str(flag)])
        elif task == "MRPC":
            rows.append([str(flag), str(1000 + i), str(2000 + i), a, b])
        elif task == "QQP":
            rows.append([str(i), str(2 * i), str(2 * i + 1), a, b, str(flag)])
        elif task == "STS-B":
            rows.append([str(i), "main-news", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, f"{(i % 6) * 0.8:.3f}"])
        elif task == "MNLI":
            label = ("entailment", "neutral", "contradiction")[i % 3]
            rows.append([str(i), "31193", f"{i}e", "government", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b, label, label])
        elif task == "QNLI":
            rows.append([str(i), a, b, ("entailment", "not_entailment")[flag]])
        else:  # RTE, WNLI
            rows.append([str(i), a, b, ("entailment", "not_entailment")[flag] if task == "RTE" else str(flag)])
    return rows


HEADERS = {
    "SST-2": ["sentence", "label"],
    "MRPC": ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "STS-B": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
    "MNLI": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
             "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
    "WNLI": ["index", "sentence1", "sentence2", "label"],
}
FOLDERS = ["CoLA", *HEADERS]


def write_glue(root: Path, n_train: int = 16, n_dev: int = 8) -> Path:
    rng = random.Random(0)
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        devs = ["dev_matched", "dev_mismatched"] if folder == "MNLI" else ["dev"]
        for split, n in [("train", n_train)] + [(d, n_dev) for d in devs]:
            lines = ([] if folder == "CoLA" else ["\t".join(HEADERS[folder])]) + ["\t".join(r) for r in _rows(folder, rng, n)]
            (root / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def glue_dir(tmp_path):
    return write_glue(tmp_path / "glue")


def save_tiny(path: Path, head: str = "mlm", seed: int = 0) -> Path:
    """A tiny BERT (head 'mlm' or 'base') with a WordPiece tokenizer over the fixture words."""
    tiny_model("bert", head, seed=seed).save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(path)
    return path


def write_corpus(path: Path, lines: int = 200, seed: int = 0) -> Path:
    rng = random.Random(seed)
    text = "\n".join(" = Heading = " if i % 25 == 0 else sentence(rng, 12) for i in range(lines))
    path.write_text(text + "\n\n", encoding="utf-8")
    return path
