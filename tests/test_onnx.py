"""`prunelab export-onnx`: dense, layer-dropped and structurally pruned models run in onnxruntime as in PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

import prunelab
from conftest import tiny_model
from prunelab.artifact import save_artifact
from prunelab.cli import main
from prunelab.deploy.onnx import export_onnx
from prunelab.methods import structured as S
from prunelab.methods.layer_drop import drop_layers


def run_both(model_dir, onnx_file, batch: int, length: int):
    """onnxruntime's and PyTorch's outputs of the saved model on a batch of another shape than the export's."""
    ids = torch.randint(5, 60, (batch, length), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[-1, length // 3:] = 0
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = prunelab.from_pretrained(model_dir).model(input_ids=ids, attention_mask=mask)[0].numpy()
    return got, want


@pytest.mark.parametrize("model_type, how", [("bert", "dense"), ("bert", "layers"), ("bert", "structured"),
                                             ("distilbert", "structured"), ("xlnet", "structured")])
def test_exported_models_match_pytorch_on_other_shapes(tmp_path, model_type, how):
    model = tiny_model(model_type, "cls")
    if how == "layers":
        drop_layers(model, [1])
    elif how == "structured":
        S.prune_units(model, heads=0.5, ffn=0.5, scope="global")
    save_artifact(model, None, None, {}, tmp_path / "m")
    info = export_onnx(str(tmp_path / "m"), tmp_path / "m.onnx")
    assert info["max_abs_diff"] < 1e-4 and info["output"] == "logits"
    assert info["exporter"] == ("torchscript" if model_type == "xlnet" else "dynamo")
    for batch, length in ((1, 5), (4, 23)):  # dynamic batch and sequence axes
        got, want = run_both(tmp_path / "m", tmp_path / "m.onnx", batch, length)
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_export_refuses_a_wrong_or_existing_path(tmp_path, capsys):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "m")
    assert main(["export-onnx", str(tmp_path / "m"), "--out", str(tmp_path / "m.txt")]) == 2
    assert "must name a .onnx file" in capsys.readouterr().err and not (tmp_path / "m.txt").exists()
    (tmp_path / "m.onnx").write_text("mine")
    assert main(["export-onnx", str(tmp_path / "m"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "m.onnx").read_text() == "mine"
    assert main(["export-onnx", str(tmp_path / "m"), "--out", str(tmp_path / "m.onnx"), "--overwrite"]) == 0
    # the overwritten file is the model's graph: its inputs, its one output, and PyTorch's values on another shape
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    ids = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    assert len(got) == 1 and got[0].shape == want.shape == (3, 9, 32)
    assert np.abs(got[0] - want).max() < 1e-4
