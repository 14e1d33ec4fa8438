"""The modern-bert architecture unit: its tensor plan agrees with gguf-py's name map, the registry picks it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS, get_tensor_name_map

from granite_gguf.convert.architecture import Dimensions, for_config, for_gguf
from granite_gguf.convert.modern_bert import MODERN_BERT, TENSOR_PLAN, ModernBertSpec, layout, tensor_shapes
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.errors import UserError
from tests.helpers import Workspace

DIMS = Dimensions(hidden=64, intermediate=96, layers=4, heads=2)


def test_gguf_py_maps_every_planned_state_dict_name_to_its_gguf_name() -> None:
    name_map = get_tensor_name_map(MODEL_ARCH.MODERN_BERT, DIMS.layers)
    for tensor in layout(DIMS, 1000):
        assert name_map.get_type_and_name(tensor.hf_name, try_suffixes=(".weight",)) == (tensor.tensor, tensor.gguf_name)


def test_plan_uses_only_modern_bert_tensor_types() -> None:
    assert {slot.tensor for slot in TENSOR_PLAN} <= set(MODEL_TENSORS[MODEL_ARCH.MODERN_BERT])


def test_layout_in_state_dict_and_file_order() -> None:
    hf_names = [t.hf_name for t in layout(DIMS, 1000)]
    assert hf_names[:3] == ["embeddings.tok_embeddings.weight", "embeddings.norm.weight", "layers.0.attn.Wqkv.weight"]
    assert hf_names[-1] == "final_norm.weight"
    assert "layers.0.attn_norm.weight" not in hf_names and "layers.1.attn_norm.weight" in hf_names
    shapes = tensor_shapes(DIMS, 1000)
    assert list(shapes)[:4] == ["token_embd.weight", "token_embd_norm.weight", "output_norm.weight", "blk.0.attn_qkv.weight"]
    assert len(shapes) == 3 + 4 * 6 - 1
    assert shapes["token_embd.weight"] == (1000, 64)
    assert shapes["blk.3.ffn_up.weight"] == (192, 64) and shapes["blk.3.ffn_down.weight"] == (64, 96)


def test_registry() -> None:
    assert MODERN_BERT.name == "modern-bert"
    assert for_gguf("modern-bert") is MODERN_BERT and for_gguf("llama") is None
    assert for_config({"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]}) is MODERN_BERT
    with pytest.raises(UserError, match="unsupported architecture BertModel; only ModernBertModel, ModernBertForMaskedLM convert"):
        for_config({"model_type": "bert", "architectures": ["BertModel"]})
    with pytest.raises(UserError, match="unsupported architecture modernbert;"):  # architectures not a list
        for_config({"model_type": "modernbert", "architectures": 7})


def _with_extra_tensor(workspace: Workspace, tmp_path: Path, name: str) -> Path:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "checkpoint"
    shutil.copytree(workspace.checkpoint("tiny-gpt2"), folder)
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = np.ones(64, dtype=np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "message"), [
    ("layers.1.attention_norm.weight", "are both blk.1.attn_norm.weight"),  # another model's name for a planned tensor
    ("layers.1.attn.extra.weight", "unsupported tensor for a 4-layer ModernBERT encoder"),
    ("layers.0.attn_norm.weight", "unexpected tensor for a 4-layer model"),  # layer 0 has no attention norm
])
def test_tensors_outside_the_plan_are_refused(workspace: Workspace, tmp_path: Path, extra: str, message: str) -> None:
    ckpt = open_checkpoint(str(_with_extra_tensor(workspace, tmp_path, extra)))
    spec = ModernBertSpec.from_checkpoint(ckpt)
    with pytest.raises(UserError, match=message):
        spec.map_tensors(ckpt)
