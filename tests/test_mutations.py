"""Planted conversion bugs must fail verification (the fixtures are sensitive enough to catch them).

A subset of the probe set is used for speed: its texts are part of the full set, so a minimum cosine
below threshold (or a token mismatch) on the subset is also one on the full set.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.probes import probe_texts
from granite_gguf.verify import Reference, compare, run_reference
from tests.helpers import Workspace, cli_command
from tests.mutations import MUTATIONS, mutated_copy

pytestmark = [pytest.mark.slow]

MODEL_MUTATIONS = [m for m in MUTATIONS if m not in ("extra EOS", "missing BOS")]
CASES = [(m, "tiny-gemma3") for m in MODEL_MUTATIONS] + [
    ("swapped GLU halves", "tiny-o200k"),  # SwiGLU
    ("wrong eps", "tiny-gpt2"),  # legacy config keys
    ("extra EOS", "tiny-gemma3"),  # template "<bos> $A"
    ("missing BOS", "tiny-gpt2"),  # template "[CLS] $A [SEP]"
    ("missing BOS", "tiny-o200k"),
]
_subset_references: dict[str, Reference] = {}


def subset_reference(workspace: Workspace, family: str) -> Reference:
    if family not in _subset_references:
        texts = list(probe_texts()[:250]) + list(probe_texts()[-12:])
        _subset_references[family] = run_reference(str(workspace.checkpoint(family)), texts)
    return _subset_references[family]


def test_unmutated_subset_passes(workspace: Workspace) -> None:
    """The control: the same subset and a correct f32 file pass, so failures below are the bug's."""
    assert compare(subset_reference(workspace, "tiny-gemma3"), workspace.gguf("tiny-gemma3", "f32")).passed


@pytest.mark.parametrize(("mutation", "family"), CASES)
def test_planted_bug_fails_verification(workspace: Workspace, tmp_path: Path, mutation: str, family: str) -> None:
    mutated = mutated_copy(workspace.checkpoint(family), mutation, tmp_path / "mutated")
    gguf = convert(open_checkpoint(str(mutated)), tmp_path / "mutated.gguf", OutType.F32)
    report = compare(subset_reference(workspace, family), gguf)
    assert not report.passed, f"{mutation} on {family} went unnoticed:\n{report.table()}"
    if mutation in ("extra EOS", "missing BOS"):
        assert report.token_mismatches == report.n_texts
    else:
        assert report.token_mismatches == 0
        assert report.cosine_min < 0.998, "the bug must fail even the loosest (q8_0) threshold"


def test_verify_command_exits_1_on_planted_bug(workspace: Workspace, tmp_path: Path) -> None:
    """`verify --all DIR`: every file in the folder is checked; one bad file fails the run."""
    mutated = mutated_copy(workspace.checkpoint("tiny-gpt2"), "wrong global RoPE base", tmp_path / "mutated")
    folder = tmp_path / "set"
    folder.mkdir()
    convert(open_checkpoint(str(mutated)), folder / "rope.gguf", OutType.F32)
    convert(open_checkpoint(str(workspace.checkpoint("tiny-gpt2"))), folder / "good.gguf", OutType.F32)
    result = subprocess.run(cli_command("verify", str(workspace.checkpoint("tiny-gpt2")),
                             "--all", str(folder), "--json", str(tmp_path / "report.json")), capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "FAIL" in result.stdout and "PASS" in result.stdout
    reports = {Path(r["gguf"]).name: r["passed"] for r in json.loads((tmp_path / "report.json").read_text())}
    assert reports == {"good.gguf": True, "rope.gguf": False}
