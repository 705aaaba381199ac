"""Tiny random models of every supported architecture, built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
import transformers

VOCAB = 64

CONFIGS = {
    "bert": lambda: transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=37, max_position_embeddings=64),
    "roberta": lambda: transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=37, max_position_embeddings=66, pad_token_id=1),
    "electra": lambda: transformers.ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=37, max_position_embeddings=64),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                                        max_position_embeddings=64),
    "xlnet": lambda: transformers.XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=37),
}
MODEL_TYPES = list(CONFIGS)

HEADS = {
    "base": lambda mt: transformers.AutoModel,
    "mlm": lambda mt: transformers.XLNetLMHeadModel if mt == "xlnet" else transformers.AutoModelForMaskedLM,
    "cls": lambda mt: transformers.AutoModelForSequenceClassification,
}


def tiny_model(model_type: str = "bert", head: str = "base", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = HEADS[head](model_type)
    config = CONFIGS[model_type]()
    model = cls(config) if cls is transformers.XLNetLMHeadModel else cls.from_config(config)
    return model.eval()


def batch(model_type: str = "bert", size: int = 4, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (size, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture
def bert_dir(tmp_path):
    """A tiny BERT MLM saved with save_pretrained, with a tokenizer, like a hub checkpoint on disk."""
    path = tmp_path / "tiny-bert"
    tiny_model("bert", "mlm").save_pretrained(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab_file)).save_pretrained(path)
    return path
