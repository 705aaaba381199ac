"""Sparse execution keeps the model's data: state dicts, save_pretrained, dtype and device moves, copies, loading, and
``dense_execution`` back to plain ``nn.Linear`` layers."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch import nn

import prunelab
from conftest import batch, tiny_model
from prunelab import Pruner, PruningConfig
from prunelab.deploy.execution import SparseLinear, sparse_execution

# every layout a CPU offers; BSR's 32-wide blocks fit only the tiny model's 32 x 32 matrices, the rest stay dense
LAYOUTS = ["csr", "coo", "bsr"]


def pruned(seed: int = 0) -> nn.Module:
    model = tiny_model("bert", "base", seed=seed)
    Pruner(model, PruningConfig(sparsity=0.9)).update_masks(0.9, step=0)
    return model


def executed(layout: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A pruned tiny BERT and an identical one given ``sparse_execution`` forced to `layout`."""
    dense, sparse = pruned(seed), pruned(seed)
    sparse_execution(sparse, batch("bert"), mode=layout, repeats=1)
    layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    assert layers and all(m.layout == layout for m in layers)
    return dense, sparse


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch("bert")).last_hidden_state


def assert_same_state(got: dict, want: dict) -> None:
    assert list(got) == list(want)  # the same keys in the same order
    bad = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not bad, bad


def dense_layout(layout: str) -> torch.layout:
    return {"csr": torch.sparse_csr, "coo": torch.sparse_coo, "bsr": torch.sparse_bsr}[layout]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_has_the_dense_keys_and_values(layout):
    dense, sparse = executed(layout)
    state = sparse.state_dict()
    assert_same_state(state, dense.state_dict())
    assert all(v.layout == torch.strided for v in state.values())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_save_pretrained_loads_in_plain_transformers_with_equal_outputs(tmp_path, layout):
    dense, sparse = executed(layout)
    sparse.save_pretrained(tmp_path / "m")
    plain, info = transformers.AutoModel.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not any(isinstance(m, SparseLinear) for m in plain.modules())
    assert_same_state(plain.state_dict(), dense.state_dict())
    assert torch.allclose(outputs(plain.eval()), outputs(sparse), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_to_float64_converts_the_sparse_weights_and_runs(layout):
    dense, sparse = executed(layout)
    sparse.to(torch.float64)
    dense.to(torch.float64)
    layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    assert all(m.weight.dtype == torch.float64 and m.weight.layout == dense_layout(layout) for m in layers)
    assert all(isinstance(m.bias, nn.Parameter) and m.bias.dtype == torch.float64 for m in layers)
    got, want = outputs(sparse), outputs(dense)
    assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-12, rtol=0)
    assert_same_state(sparse.state_dict(), dense.state_dict())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_half_double_float_and_to_device_carry_the_sparse_weights(layout):
    dense, sparse = executed(layout)
    sparse.half()
    dense.half()
    assert_same_state(sparse.state_dict(), dense.state_dict())
    sparse.double().float()
    dense.double().float()
    sparse.to(torch.device("cpu"))
    assert_same_state(sparse.state_dict(), dense.state_dict())
    assert all(m.weight.dtype == torch.float32 for m in sparse.modules() if isinstance(m, SparseLinear))
    assert torch.allclose(outputs(sparse), outputs(dense), atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_to_cuda_and_back_keeps_the_weights(layout):
    dense, sparse = executed(layout)
    sparse.to("cuda")
    layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    assert all(m.weight.is_cuda and m.bias.is_cuda for m in layers)
    with torch.no_grad():
        got = sparse(**{k: v.cuda() for k, v in batch("bert").items()}).last_hidden_state.cpu()
    assert torch.allclose(got, outputs(dense), atol=1e-5, rtol=0)
    sparse.cpu()
    assert_same_state(sparse.state_dict(), dense.state_dict())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_deepcopy_is_an_independent_equal_model(layout):
    dense, sparse = executed(layout)
    twin = copy.deepcopy(sparse)
    assert_same_state(twin.state_dict(), dense.state_dict())
    assert torch.equal(outputs(twin), outputs(sparse))
    twin.to(torch.float64)  # converting the copy leaves the original as it was
    assert_same_state(sparse.state_dict(), dense.state_dict())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_state_dict_resparsifies_in_the_layer_layout(layout):
    _, sparse = executed(layout)
    other = pruned(seed=1)  # other weights and another pattern of zeros
    result = sparse.load_state_dict(other.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    assert layers and all(m.weight.layout == dense_layout(layout) for m in layers)
    assert_same_state(sparse.state_dict(), other.state_dict())
    assert torch.allclose(outputs(sparse), outputs(other), atol=1e-5, rtol=0)


def test_load_state_dict_reports_a_missing_or_misshapen_sparse_weight():
    _, sparse = executed("csr")
    state = sparse.state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    before = state[key].clone()
    with pytest.raises(RuntimeError, match=f"size mismatch for {key}"):
        sparse.load_state_dict({**state, key: torch.zeros(3, 3)})
    assert torch.equal(sparse.state_dict()[key], before)
    result = sparse.load_state_dict({k: v for k, v in state.items() if k != key}, strict=False)
    assert result.missing_keys == [key] and not result.unexpected_keys


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dense_execution_gives_back_plain_linear_layers(layout):
    dense, sparse = executed(layout)
    names = [n for n, m in sparse.named_modules() if isinstance(m, SparseLinear)]
    biases = {n: sparse.get_submodule(n).bias for n in names}
    want = outputs(sparse)
    assert prunelab.dense_execution(sparse) is sparse
    assert not any(isinstance(m, SparseLinear) for m in sparse.modules())
    assert all(type(sparse.get_submodule(n)) is nn.Linear and sparse.get_submodule(n).bias is biases[n] for n in names)
    assert not hasattr(sparse, "prunelab_execution")
    assert_same_state(sparse.state_dict(), dense.state_dict())
    assert sorted(n for n, _ in sparse.named_parameters()) == sorted(n for n, _ in dense.named_parameters())
    assert torch.allclose(outputs(sparse), want, atol=1e-5, rtol=0)
