"""Converter behaviour: metadata, tokenizer mapping, config formats, sharded/bf16 sources, atomic output."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from safetensors.numpy import load_file

from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.dev.fixtures import USER_DEFINED_TOKEN
from granite_gguf.errors import UserError
from granite_gguf.gguf_file import load
from granite_gguf.models import MULTILINGUAL_311M
from tests.helpers import FAMILIES, Workspace

EXPECTED_PRE = {"tiny-gemma3": "granite-embed-multi-311m", "tiny-o200k": "granite-embed-multi-97m", "tiny-gpt2": "modern-bert"}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_loads_modern_bert_with_cls_pooling(workspace: Workspace, family: str) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(workspace.gguf(family, "q8_0")), embedding=True, n_ctx=256, verbose=False)
    try:
        assert llm.metadata["general.architecture"] == "modern-bert"
        assert llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_CLS
        assert llm.n_embd() == 64
    finally:
        llm.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata(workspace: Workspace, family: str) -> None:
    config = json.loads((workspace.checkpoint(family) / "config.json").read_text())
    meta = load(workspace.gguf(family, "f16"), check=False, whole=True).header.metadata
    assert meta["modern-bert.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert meta["modern-bert.rope.freq_base"] == 80_000.0
    assert meta["modern-bert.rope.freq_base_swa"] == 10_000.0
    assert meta["modern-bert.attention.sliding_window"] == 128
    assert meta["modern-bert.attention.sliding_window_pattern"] == 3
    assert meta["modern-bert.attention.causal"] is False
    assert meta["modern-bert.pooling_type"] == 2
    assert meta["modern-bert.hidden_activation"] == config["hidden_activation"]
    assert meta["modern-bert.vocab_size"] == config["vocab_size"] == len(meta["tokenizer.ggml.tokens"])
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == EXPECTED_PRE[family]
    assert meta["general.file_type"] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_vocab_is_unique_padded_and_typed(workspace: Workspace, family: str) -> None:
    from tokenizers import Tokenizer

    meta = load(workspace.gguf(family, "f32"), check=False, whole=True).header.metadata
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    hf = Tokenizer.from_file(str(workspace.checkpoint(family) / "tokenizer.json"))
    n_hf = hf.get_vocab_size(with_added_tokens=True)
    assert len(set(tokens)) == len(tokens)
    assert tokens[:n_hf] == [hf.id_to_token(i) for i in range(n_hf)]
    assert len(tokens) > n_hf and all(t == TokenType.UNUSED for t in types[n_hf:])
    for special in ("<bos>", "[CLS]", "<|startoftext|>"):
        if hf.token_to_id(special) is not None:
            assert types[hf.token_to_id(special)] == TokenType.CONTROL
    if family == "tiny-gemma3":
        assert types[tokens.index("<0x0A>")] == TokenType.BYTE
        assert sum(t == TokenType.BYTE for t in types) == 256
        assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    else:
        assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is True
    if family == "tiny-gpt2":
        assert types[tokens.index(USER_DEFINED_TOKEN)] == TokenType.USER_DEFINED


def test_merges_with_newlines_and_spaces_survive(workspace: Workspace) -> None:
    tokenizer = json.loads((workspace.checkpoint("tiny-gemma3") / "tokenizer.json").read_text())
    merges = load(workspace.gguf("tiny-gemma3", "f32"), check=False, whole=True).header.metadata["tokenizer.ggml.merges"]
    assert merges == [" ".join(m) for m in tokenizer["model"]["merges"]]
    assert any("\n" in m for m in merges), "the fixture must exercise merges containing newlines"


def test_tokens_mixing_newlines_are_reported(workspace: Workspace, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """llama.cpp's Gemma-style splitter cuts at newlines: a token "\na" is HF-only, and the converter says so."""
    from tokenizers import Tokenizer

    from granite_gguf.bindings.embedder import Embedder

    folder = tmp_path / "newline"
    shutil.copytree(workspace.checkpoint("tiny-gemma3"), folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    assert "a" in vocab and "\na" not in vocab
    vocab["\na"] = len(vocab)
    tokenizer["model"]["merges"].append(["\n", "a"])
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with caplog.at_level("WARNING"):
        out = convert(open_checkpoint(str(folder)), tmp_path / "newline.gguf", OutType.F32)
    assert "1 tokens mix a newline with other text (e.g. '\\na')" in caplog.text
    text = "x\na"
    hf = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
    with Embedder(out, max_tokens=64) as embedder:
        ours = embedder.tokenize(text)
    assert vocab["\na"] in hf and vocab["\na"] not in ours, "the warning describes a real difference"


@pytest.mark.slow
def test_duplicate_token_texts_are_never_written(workspace: Workspace, tmp_path: Path) -> None:
    """An added token repeating a vocabulary entry (as byte-fallback pieces often do) must not reach llama.cpp twice."""
    import llama_cpp

    folder = tmp_path / "dup"
    shutil.copytree(workspace.checkpoint("tiny-gemma3"), folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    new_id = len(tokenizer["model"]["vocab"])
    tokenizer["added_tokens"].append({"id": new_id, "content": "<0x41>", "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    out = convert(open_checkpoint(str(folder)), tmp_path / "dup.gguf", OutType.F32)
    tokens = load(out, check=False, whole=True).header.metadata["tokenizer.ggml.tokens"]
    assert len(set(tokens)) == len(tokens)
    assert tokens[new_id] == "<0x41>"
    llama_cpp.Llama(str(out), embedding=True, n_ctx=64, verbose=False).close()


def test_legacy_and_transformers5_configs_give_the_same_file(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "t5"
    shutil.copytree(workspace.checkpoint("tiny-gpt2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"full_attention": {"rope_theta": config.pop("global_rope_theta")},
                                 "sliding_attention": {"rope_theta": config.pop("local_rope_theta")}}
    config["layer_types"] = ["full_attention" if i % 3 == 0 else "sliding_attention" for i in range(config["num_hidden_layers"])]
    del config["global_attn_every_n_layers"]
    (folder / "config.json").write_text(json.dumps(config))
    out = convert(open_checkpoint(str(folder)), tmp_path / "t5.gguf", OutType.F16)
    ours, theirs = load(out, check=False).summary.metadata, load(workspace.gguf("tiny-gpt2", "f16"), check=False).summary.metadata
    assert {k: v for k, v in ours.items() if k.startswith("modern-bert.")} == {k: v for k, v in theirs.items() if k.startswith("modern-bert.")}


def test_irregular_layer_types_are_refused(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "irregular"
    shutil.copytree(workspace.checkpoint("tiny-o200k"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["layer_types"] = ["full_attention", "full_attention", "sliding_attention", "full_attention"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="not every n-th layer"):
        convert(open_checkpoint(str(folder)), tmp_path / "x.gguf", OutType.F32)


def test_sharded_bf16_checkpoint_reads_like_the_single_file(workspace: Workspace, tmp_path: Path) -> None:
    """Two shards with an index, stored as bfloat16: the converter must read both right."""
    import torch
    from safetensors.torch import save_file as save_torch

    folder = tmp_path / "sharded"
    shutil.copytree(workspace.checkpoint("tiny-o200k"), folder)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for shard, shard_names in shards.items():
        save_torch({n: torch.from_numpy(tensors[n]).to(torch.bfloat16) for n in shard_names}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {n: shard for shard, ns in shards.items() for n in ns}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = open_checkpoint(str(folder))
    for name in names:
        expected = torch.from_numpy(tensors[name]).to(torch.bfloat16).to(torch.float32).numpy()
        assert np.array_equal(ckpt.read(name), expected)
    reader = GGUFReader(convert(ckpt, tmp_path / "bf16.gguf", OutType.BF16))
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "blk.3.ffn_up.weight"}


def test_failed_conversion_leaves_no_file(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import granite_gguf.convert.writer as writer

    calls = {"n": 0}
    original = writer.encode_rows

    def failing(rows: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return original(rows, ggml_type)

    monkeypatch.setattr(writer, "encode_rows", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert(open_checkpoint(str(workspace.checkpoint("tiny-gpt2"))), tmp_path / "x.gguf", OutType.Q8_0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_conversion_never_leaves_a_file_under_the_final_name(workspace: Workspace, tmp_path: Path, sig: signal.Signals) -> None:
    """The child kills itself half-way through writing tensors."""
    out = tmp_path / "killed.gguf"
    previous = tmp_path / "previous.gguf"
    script = f"""
import os, signal, sys
import granite_gguf.convert.writer as writer
from granite_gguf.cli import main
original, calls = writer.encode_rows, [0]
def encode(rows, ggml_type):
    calls[0] += 1
    if calls[0] == 6:
        os.kill(os.getpid(), {int(sig)})
    return original(rows, ggml_type)
writer.encode_rows = encode
sys.exit(main(["convert", {str(workspace.checkpoint("tiny-o200k"))!r}, "-o", {str(out)!r}, "--no-progress"]))
"""
    previous.write_bytes(b"an earlier good file")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert not out.exists()
    assert previous.read_bytes() == b"an earlier good file"
    if sig == signal.SIGTERM:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["previous.gguf"], "SIGTERM must clean the temporary file"


def test_matryoshka_dims_from_option_and_builtin_table(workspace: Workspace, tmp_path: Path) -> None:
    source = workspace.checkpoint("tiny-gemma3")
    out = convert(open_checkpoint(str(source)), tmp_path / "m.gguf", OutType.F16, matryoshka_dims=(32, 64, 16))
    assert load(out, check=False).summary.matryoshka_dims == (64, 32, 16)
    assert load(workspace.gguf("tiny-gemma3", "f16"), check=False).summary.matryoshka_dims == ()
    named = tmp_path / MULTILINGUAL_311M.name  # a published model's dimensions (granite_gguf.models), too wide for the fixture
    shutil.copytree(source, named)
    with pytest.raises(UserError, match=r"\[768, 512, 384, 256, 128\] must lie in 1..64"):
        convert(open_checkpoint(str(named)), tmp_path / "n.gguf", OutType.F16)


@pytest.mark.slow
def test_fixtures_are_identical_across_processes(workspace: Workspace, tmp_path: Path) -> None:
    """Tokenizer training must not depend on per-process hash seeds (tie-breaking) or anything else."""
    script = "import sys; from pathlib import Path; from granite_gguf.dev.fixtures import FIXTURES, build_fixture\n" \
             "[build_fixture(n, Path(sys.argv[1]) / n) for n in FIXTURES]"
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    for name in FAMILIES:
        for file in ("tokenizer.json", "config.json", "model.safetensors"):
            assert (tmp_path / name / file).read_bytes() == (workspace.checkpoint(name) / file).read_bytes(), f"{name}/{file}"
