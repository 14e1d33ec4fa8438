"""Planted conversion bugs: copies of a fixture checkpoint with one fact changed.

Converting a mutated copy gives exactly the GGUF a converter with that bug would write; `verify`
against the *original* checkpoint must then fail (docs/architecture.md, "Parity and sensitive fixtures").
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _set_rope(kind: str, value: float) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        if "rope_parameters" in config:
            config["rope_parameters"]["full_attention" if kind == "global" else "sliding_attention"]["rope_theta"] = value
        else:
            config[f"{kind}_rope_theta"] = value
    return edit


def _set_pattern(config: dict[str, Any]) -> None:
    config["global_attn_every_n_layers"] = 2
    if "layer_types" in config:
        config["layer_types"] = ["full_attention" if i % 2 == 0 else "sliding_attention" for i in range(len(config["layer_types"]))]


def _swap_glu_halves(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    for name, value in tensors.items():
        if name.endswith("mlp.Wi.weight"):
            first, second = np.split(value, 2)
            tensors[name] = np.ascontiguousarray(np.concatenate([second, first]))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _drop_bos(tokenizer: dict[str, Any]) -> None:
    single = tokenizer["post_processor"]["single"]
    assert "SpecialToken" in single[0], "template has no leading special token to drop"
    del single[0]


def _add_eos(tokenizer: dict[str, Any]) -> None:
    post = tokenizer["post_processor"]
    eos = next(t for t in tokenizer["added_tokens"] if t["content"] in ("<eos>", "[SEP]", "<|endoftext|>"))
    post["single"].append({"SpecialToken": {"id": eos["content"], "type_id": 0}})
    post["special_tokens"][eos["content"]] = {"id": eos["content"], "ids": [eos["id"]], "tokens": [eos["content"]]}


MUTATIONS: dict[str, Callable[[Path], None]] = {
    "wrong global RoPE base": lambda d: _edit_json(d / "config.json", _set_rope("global", 160_000.0)),
    "wrong local RoPE base": lambda d: _edit_json(d / "config.json", _set_rope("local", 80_000.0)),
    "wrong window": lambda d: _edit_json(d / "config.json", lambda c: c.update(local_attention=64)),
    "wrong pattern": lambda d: _edit_json(d / "config.json", _set_pattern),
    "wrong eps": lambda d: _edit_json(d / "config.json", lambda c: c.update(norm_eps=1e-12)),
    "swapped GLU halves": _swap_glu_halves,
    "wrong pooling": lambda d: _edit_json(d / "1_Pooling" / "config.json",
                                          lambda p: p.update(pooling_mode_cls_token=False, pooling_mode_mean_tokens=True)),
    "extra EOS": lambda d: _edit_json(d / "tokenizer.json", _add_eos),
    "missing BOS": lambda d: _edit_json(d / "tokenizer.json", _drop_bos),
}


def mutated_copy(fixture: Path, mutation: str, dest: Path) -> Path:
    """A copy of `fixture` in `dest` with `mutation` planted."""
    shutil.copytree(fixture, dest)
    MUTATIONS[mutation](dest)
    return dest
