"""Token-exact and vector-exact parity of converted fixtures against the PyTorch reference."""

from __future__ import annotations

import pytest

from granite_gguf.convert.types import OutType
from granite_gguf.probes import probe_texts, scripts_covered
from granite_gguf.verify import compare
from tests.helpers import FAMILIES, Workspace

OUTTYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def test_probe_set_is_broad() -> None:
    texts = probe_texts()
    assert len(texts) >= 2000
    assert len(scripts_covered(texts)) >= 25
    assert any("\n\n" in t for t in texts) and any("  " in t for t in texts)
    assert any(len(t) > 5000 for t in texts)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_reference_has_long_inputs(workspace: Workspace, family: str) -> None:
    lengths = sorted(len(ids) for ids in workspace.reference(family).token_ids)
    assert lengths[-1] >= 2048, "the probe set must reach 2,048 tokens for every tokenizer"
    assert sum(n > 129 for n in lengths) >= 6, "several inputs must exceed the local attention window"


@pytest.mark.slow
@pytest.mark.parametrize("outtype", list(OUTTYPES))
@pytest.mark.parametrize("family", FAMILIES)
def test_parity(workspace: Workspace, family: str, outtype: str) -> None:
    report = compare(workspace.reference(family), workspace.gguf(family, outtype))
    assert report.file_type == OUTTYPES[outtype]
    assert report.token_mismatches == 0, report.mismatch_examples
    gate = OutType.parse(outtype).min_cosine
    assert gate is not None and report.cosine_min >= gate, report.table()
    assert report.passed
