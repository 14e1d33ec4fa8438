"""The published-model catalog: one record per Granite R2 model, and what reads it (fast tier)."""

from __future__ import annotations

import pytest

from granite_gguf.convert.types import OutType
from granite_gguf.dev.fixtures import FIXTURES
from granite_gguf.models import DEFAULT_SET, ENGLISH, MODELS, MULTILINGUAL_311M, Model, by_name, recognise
from granite_gguf.release import hub_id, recommended_set


def test_knows_the_four_granite_r2_models() -> None:
    assert len({model.name for model in MODELS}) == len({model.short for model in MODELS}) == 4
    assert hub_id(MULTILINGUAL_311M.name) == f"ibm-granite/{MULTILINGUAL_311M.name}" == MULTILINGUAL_311M.hub_id
    assert hub_id("some/other") == "some/other"
    assert [t.label for t in recommended_set(MULTILINGUAL_311M.name)] == [
        "f16", "q8_0", "q8_0+emb_q4_k", "q6_k+emb_q4_k", "q4_0+emb_q4_0"]
    assert recommended_set(ENGLISH.name) == recommended_set("anything-else") == [OutType.F16, OutType.Q8_0]


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.short)
def test_records_are_consistent(model: Model) -> None:
    assert by_name(model.name) is model
    assert set(DEFAULT_SET) <= set(model.recommended)
    dims = model.shape.dims
    assert dims.hidden % dims.heads == 0
    assert all(0 < d <= dims.hidden for d in model.matryoshka_dims)
    assert list(model.matryoshka_dims) == sorted(model.matryoshka_dims, reverse=True)


def test_a_checkpoint_is_recognised_by_its_folder_or_its_config() -> None:
    assert recognise(f"/tmp/{MULTILINGUAL_311M.name}/", {}) is MULTILINGUAL_311M
    assert recognise(MULTILINGUAL_311M.hub_id, {}) is MULTILINGUAL_311M
    assert recognise("/tmp/copy", {"_name_or_path": ENGLISH.hub_id}) is ENGLISH
    assert recognise("/tmp/copy", {"_name_or_path": "someone/else"}) is None


def test_fixtures_mirror_a_record_each_tokenizer_family_once() -> None:
    families = [shape.family for shape in FIXTURES.values()]
    assert len(set(families)) == len(families) == 3
    assert {model.family for model in MODELS} == set(families)
    for shape in FIXTURES.values():
        assert (shape.context_length, shape.activation) == (shape.mirrors.context_length, shape.mirrors.shape.activation)
