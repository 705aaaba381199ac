import pytest

from glue_fixtures import save_tiny, write_corpus
from prunelab.artifact import load_model
from prunelab.data.corpus import read_corpus, special_tokens, split_dev, to_blocks


def test_blocks_have_exact_length_and_special_tokens(tmp_path):
    _, tokenizer = load_model(str(save_tiny(tmp_path / "m")))
    lines = read_corpus([write_corpus(tmp_path / "c.txt", lines=50)])
    assert len(lines) == 50  # blank lines dropped, headings kept
    blocks = to_blocks(lines, tokenizer, 16)
    assert blocks and all(len(b) == 16 for b in blocks)
    assert all(b[0] == tokenizer.cls_token_id and b[-1] == tokenizer.sep_token_id for b in blocks)
    assert special_tokens(tokenizer) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])
    body = sum(len(r) for r in tokenizer(lines, add_special_tokens=False)["input_ids"])
    assert len(blocks) == body // 14


def test_dev_split_and_errors(tmp_path):
    train, dev = split_dev([str(i) for i in range(100)], 0.05)
    assert dev == ["95", "96", "97", "98", "99"] and len(train) == 95
    with pytest.raises(ValueError, match="too few to hold out a dev split"):
        split_dev(["only"], 0.5)
    with pytest.raises(FileNotFoundError, match="corpus file .*missing.txt not found"):
        read_corpus([tmp_path / "missing.txt"])
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bin.txt:2: not UTF-8"):
        read_corpus([tmp_path / "bin.txt"])
