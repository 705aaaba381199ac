import pytest
import torch

from conftest import MODEL_TYPES, tiny_model
from prunelab import KINDS, resolve_targets
from prunelab.targets import get_parameter

PER_LAYER = {"bert": 6, "roberta": 6, "electra": 6, "distilbert": 6, "xlnet": 7}
HAS_POOLER = {"bert", "roberta"}  # in the bare model; MLM heads drop the pooler


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("head", ["base", "mlm", "cls"])
def test_table_resolves_the_paper_set_on_every_head(model_type, head):
    model = tiny_model(model_type, head)
    targets = resolve_targets(model)
    per_layer = [t for t in targets if t.layer is not None]
    assert len(per_layer) == 2 * PER_LAYER[model_type]
    assert sorted({t.layer for t in per_layer}) == [0, 1]
    assert [t.kind for t in targets if t.layer is None].count("embeddings") == 1
    pooled = any(t.kind == "pooler" for t in targets)
    base_has_pooler = any("pooler" in n for n, _ in model.named_parameters())
    assert pooled == (model_type in HAS_POOLER and base_has_pooler)
    for t in targets:
        param = get_parameter(model, t)
        assert tuple(param.shape) == t.shape
        assert not t.param_name.startswith(("classifier", "cls.", "lm_head", "vocab_", "generator", "lm_loss", "logits_proj", "sequence_summary"))
    # names are relative to the base model, so they agree across head classes
    assert {t.name for t in targets if t.kind != "pooler"} == {t.name for t in resolve_targets(tiny_model(model_type, "base")) if t.kind != "pooler"}


def test_xlnet_attention_targets_are_3d_parameters():
    targets = resolve_targets(tiny_model("xlnet"))
    attn = [t for t in targets if t.kind in ("query", "key", "value", "attention_output", "relative_position")]
    assert len(attn) == 10 and all(len(t.shape) == 3 for t in attn)


def test_include_exclude_and_layers():
    model = tiny_model("bert")
    only_ffn = resolve_targets(model, include="ffn_in,ffn_out")
    assert {t.kind for t in only_ffn} == {"ffn_in", "ffn_out"} and len(only_ffn) == 4
    no_emb = resolve_targets(model, exclude=["embeddings", "pooler"])
    assert not {"embeddings", "pooler"} & {t.kind for t in no_emb}
    layer1 = resolve_targets(model, layers=[1], exclude="embeddings,pooler")
    assert {t.layer for t in layer1} == {1} and len(layer1) == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"exclude": "embedding"}, "unknown kind 'embedding'"),
    ({"include": ["query", "nope"]}, "unknown kind 'nope'"),
    ({"layers": [5]}, "layer 5 does not exist"),
    ({"include": "pooler", "layers": [0]}, None),
    ({"include": "relative_position"}, "leaves no prunable weight"),
])
def test_bad_selection_is_a_clear_error(kwargs, message):
    model = tiny_model("bert")
    if message is None:
        assert [t.kind for t in resolve_targets(model, **kwargs)] == ["pooler"]
        return
    with pytest.raises(ValueError, match=message):
        resolve_targets(model, **kwargs)


def test_unknown_model_type_lists_supported():
    import transformers

    model = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=10))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'; supported: bert, distilbert, electra, roberta, xlnet"):
        resolve_targets(model)


def test_kinds_constant_covers_table():
    from prunelab.targets import ARCHITECTURES

    assert {k for arch in ARCHITECTURES.values() for k in arch.targets} <= set(KINDS)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tied_decoder_shares_the_embedding_mask(model_type):
    from prunelab import Pruner, PruningConfig

    model = tiny_model(model_type, "mlm")
    decoder = model.get_output_embeddings().weight
    Pruner(model, PruningConfig(sparsity=0.5, include=["embeddings"])).step(0)
    assert decoder.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert float((decoder == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
    assert torch.equal(decoder == 0, model.get_input_embeddings().weight == 0)
