"""Quantized types and embedding-aware recipes meet their measured thresholds (docs/quality.md), and
the retrieval metrics of granite_gguf.quality behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from granite_gguf.convert.quantize import convert_set
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.errors import UserError
from granite_gguf.quality import ndcg_at_k, pareto_front, retrieval_agreement, top_k_overlap
from granite_gguf.verify import compare
from tests.helpers import Workspace

FAMILY = "tiny-gemma3"  # mirrors the 311m, whose token embedding table is 2/3 of its parameters
LABELS = ["q6_k", "q5_k_m", "q4_k_m", "q4_k_s", "q4_0", "iq4_nl", "q8_0+emb_q4_k", "q4_0+emb_q4_0"]


@pytest.mark.slow
def test_types_and_recipes_meet_their_fixture_thresholds(workspace: Workspace, tmp_path: Path) -> None:
    results = convert_set(open_checkpoint(str(workspace.checkpoint(FAMILY))), tmp_path, OutType.parse_list(",".join(LABELS)),
                          model_name=FAMILY)
    names = {r.output.label: r.path.name for r in results}
    # hidden 64: the Q4_K table falls back to Q5_0 (llama.cpp would abort) and the name says so
    assert names["q8_0+emb_q4_k"] == f"{FAMILY}-q8_0-emb_q4_k-mostly-q8_0-emb_q5_0.gguf"
    assert names["q4_0+emb_q4_0"] == f"{FAMILY}-q4_0-emb_q4_0.gguf"
    recipe = next(r for r in results if r.output is OutType.Q4_0_EMB_Q4_0)
    assert recipe.truthful and recipe.dominant_type == GGMLQuantizationType.Q4_0 and recipe.table_type == GGMLQuantizationType.Q4_0
    reference = workspace.reference(FAMILY)
    reports = {r.output.label: compare(reference, r.path) for r in results}  # verify's default: the file's type or recipe
    assert {label: report.threshold for label, report in reports.items()} == {label: OutType.parse(label).min_cosine for label in LABELS}
    failed = {label: (report.cosine_min, report.threshold) for label, report in reports.items() if not report.passed}
    assert not failed, f"(min cosine, threshold) per failing type: {failed}"


def test_every_default_type_and_recipe_has_a_threshold() -> None:
    gates = {t.label: t.min_cosine for t in OutType if t.min_cosine is not None}
    assert set(gates) >= {"f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", *(t.label for t in OutType if t.is_recipe)}
    assert all(0 < t < 1 for t in gates.values())


def test_recipe_labels_parse() -> None:
    assert OutType.parse_list("Q4_K_M, q8_0+emb_q4_k") == [OutType.Q4_K_M, OutType.Q8_0_EMB_Q4_K]
    with pytest.raises(UserError, match="unknown type"):
        OutType.parse_list("q8_0+emb_q2_k")


def test_ndcg_and_overlap() -> None:
    rng = np.random.default_rng(0)
    relevance = rng.random(200)
    ideal = np.argsort(-relevance)
    assert ndcg_at_k(relevance, ideal) == pytest.approx(1.0)
    assert top_k_overlap(ideal, ideal) == 1.0
    swapped = ideal.copy()
    swapped[[0, 9]] = swapped[[9, 0]]  # same top 10, other order
    assert top_k_overlap(swapped, ideal) == 1.0 and ndcg_at_k(relevance, swapped) < 1.0
    shuffled = rng.permutation(200)
    assert ndcg_at_k(relevance, shuffled) < ndcg_at_k(relevance, swapped)
    assert ndcg_at_k(relevance, ideal[::-1]) < ndcg_at_k(relevance, shuffled)
    assert top_k_overlap(ideal, ideal[::-1]) == 0.0
    assert top_k_overlap(list(range(10)), [*range(5), *range(100, 105)]) == 0.5


def test_retrieval_agreement_and_pareto() -> None:
    scores = np.random.default_rng(1).random((50, 200))
    assert retrieval_agreement(scores, scores) == pytest.approx((1.0, 1.0))
    overlap, ndcg = retrieval_agreement(scores, scores + np.random.default_rng(2).normal(0, 0.1, scores.shape))
    assert 0 < overlap < 1 and 0 < ndcg < 1
    points = {"big": (100, 0.999), "dominated": (90, 0.98), "small": (80, 0.99), "tiny": (50, 0.9), "twin": (80, 0.99)}
    front = pareto_front(list(points.values()))
    assert [label for label, on in zip(points, front) if on] == ["big", "small", "tiny", "twin"]
    # (size, docs/s, cosine): a larger, slower file survives only by being more precise
    files = {"f16": (200, 3.0, 1.0), "q8_0": (110, 2.0, 0.9999), "q4_0": (96, 4.0, 0.999),
             "slow_q4": (96, 3.0, 0.999), "big_fast": (150, 4.0, 0.998)}
    front = pareto_front(list(files.values()))
    assert [label for label, on in zip(files, front) if on] == ["f16", "q8_0", "q4_0"]
