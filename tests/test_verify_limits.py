"""verify compares like with like when probes run past the model's context: both sides embed the same
ids, cut to the same limit with the special tokens kept, and the report names the texts that were cut."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.probes import probe_texts
from granite_gguf.verify import Reference, compare, run_reference, token_limit
from tests.helpers import Workspace
from tests.mutations import MUTATIONS, mutated_copy

pytestmark = pytest.mark.slow
CONTEXT = 512  # far below the longest probes (thousands of tokens), above the 128-token local window
FAMILY = "tiny-gemma3"


def short_context(fixture: Path, dest: Path, context: int = CONTEXT) -> Path:
    """A copy of `fixture` whose context and sentence-transformers max_seq_length are `context`."""
    shutil.copytree(fixture, dest)
    config = json.loads((dest / "config.json").read_text())
    config["max_position_embeddings"] = context
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": context, "do_lower_case": False}))
    return dest


def texts() -> list[str]:
    return list(probe_texts()[:150]) + list(probe_texts()[-12:])  # short ones, and every long one


# llama.cpp always adds BOS for the Gemma-style family, so a missing BOS is planted in a GPT-2-style template
CASES = [(m, FAMILY) for m in MUTATIONS if m != "missing BOS"] + [("missing BOS", "tiny-gpt2")]
_checkpoints: dict[str, Path] = {}
_references: dict[str, Reference] = {}


def short_checkpoint(workspace: Workspace, family: str) -> Path:
    if family not in _checkpoints:
        _checkpoints[family] = short_context(workspace.checkpoint(family), workspace.root / f"{family}-short")
    return _checkpoints[family]


def short_reference(workspace: Workspace, family: str) -> Reference:
    if family not in _references:
        _references[family] = run_reference(str(short_checkpoint(workspace, family)), texts())
    return _references[family]


@pytest.fixture(scope="module")
def checkpoint(workspace: Workspace) -> Path:
    return short_checkpoint(workspace, FAMILY)


@pytest.fixture(scope="module")
def reference(workspace: Workspace) -> Reference:
    return short_reference(workspace, FAMILY)


def test_limit_is_the_smallest_of_context_and_max_seq_length(checkpoint: Path, tmp_path: Path) -> None:
    assert token_limit(open_checkpoint(str(checkpoint))) == CONTEXT
    assert token_limit(open_checkpoint(str(checkpoint)), max_tokens=300) == 300
    st_only = shutil.copytree(checkpoint, tmp_path / "st")
    (st_only / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    assert token_limit(open_checkpoint(str(st_only))) == 256


def test_correct_file_passes_and_cut_texts_are_named(checkpoint: Path, reference: Reference, tmp_path: Path) -> None:
    hf = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    too_long = [i for i, e in enumerate(hf.encode_batch(texts())) if len(e.ids) > CONTEXT]
    assert len(too_long) >= 3  # the three probes of thousands of tokens
    gguf = convert(open_checkpoint(str(checkpoint)), tmp_path / "short-f32.gguf", OutType.F32)
    report = compare(reference, gguf)
    assert report.passed, report.table()
    assert report.token_limit == report.file_token_limit == CONTEXT and report.max_tokens > 4 * CONTEXT
    assert [t["index"] for t in report.truncated_texts] == too_long
    table = report.table()
    assert f"texts cut               {len(too_long)} (cut to {CONTEXT} tokens, special tokens kept)" in table
    assert f"#{too_long[0]}" in table


@pytest.mark.parametrize(("mutation", "family"), CASES)
def test_planted_bug_fails(workspace: Workspace, tmp_path: Path, mutation: str, family: str) -> None:
    mutated = mutated_copy(short_checkpoint(workspace, family), mutation, tmp_path / "mutated")
    gguf = convert(open_checkpoint(str(mutated)), tmp_path / "mutated.gguf", OutType.F32)
    report = compare(short_reference(workspace, family), gguf)
    assert report.truncated_texts, "the probes run past the context"
    assert not report.passed, f"{mutation} went unnoticed:\n{report.table()}"
    if mutation in ("extra EOS", "missing BOS"):
        assert report.token_mismatches == report.n_texts
    else:
        assert report.token_mismatches == 0 and report.cosine_min < 0.998


def test_a_file_with_a_shorter_context_fails(workspace: Workspace, reference: Reference, tmp_path: Path) -> None:
    """The GGUF cannot take the inputs the reference embedded: not like with like, so not a pass."""
    shorter = short_context(workspace.checkpoint(FAMILY), tmp_path / "shorter", context=256)
    report = compare(reference, convert(open_checkpoint(str(shorter)), tmp_path / "shorter.gguf", OutType.F32))
    assert report.file_token_limit == 256 < report.needed == CONTEXT
    assert not report.passed and "shorter than the 512 compared" in report.table()
