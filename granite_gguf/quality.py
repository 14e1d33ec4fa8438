"""Retrieval agreement and the Pareto front: how much a quantized file's rankings differ from the reference's.

The retrieval probe: 200 passages of CLDR text and 50 queries that are a short span of one passage
each. Every passage is ranked per query by cosine with the reference vectors and with the file's;
the file's ranking is scored by top-10 overlap and nDCG@10 (graded relevance: the reference cosine,
clipped at 0). Used by scripts/quality_table.py (docs/quality.md), whose Pareto front of (size,
docs/s, cosine mean) names the recipes `release` recommends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from granite_gguf.gguf_file import GGUFSummary
from granite_gguf.probe_text import cldr_sentences

N_PASSAGES = 200
QUERY_EVERY = 4  # a query from every 4th passage: 50 queries
RUNS_PER_PASSAGE = 3  # consecutive CLDR runs per passage (about 200 characters)
K = 10


@dataclass
class RetrievalProbe:
    passages: list[str]
    queries: list[str]

    @property
    def texts(self) -> list[str]:
        return self.passages + self.queries

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Query × passage cosines from the vectors of `texts` (passages first, then queries)."""
        passages, queries = vectors[: len(self.passages)], vectors[len(self.passages):]
        return queries @ passages.T


def retrieval_probe() -> RetrievalProbe:
    """Passages: runs of CLDR names spread over all locales; queries: the first three names of the
    middle run of every 4th passage (so each query has one source passage, in its own language)."""
    runs = cldr_sentences()
    starts = [k * (len(runs) - RUNS_PER_PASSAGE) // N_PASSAGES for k in range(N_PASSAGES)]
    passages = [" ".join(runs[i : i + RUNS_PER_PASSAGE]) for i in starts]
    queries = [", ".join(runs[i + 1].split(", ")[:3]) for i in starts[::QUERY_EVERY]]
    return RetrievalProbe(passages, queries)


def ndcg_at_k(relevance: np.ndarray, ranking: Sequence[int] | np.ndarray, k: int = K) -> float:
    """nDCG@k of `ranking` (passage indices, best first) with graded `relevance` per passage."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(np.sum(relevance[np.asarray(ranking[:k])] * discounts[: len(ranking[:k])]))
    ideal = float(np.sum(np.sort(relevance)[::-1][:k] * discounts))
    return dcg / ideal if ideal > 0 else 1.0


def top_k_overlap(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, k: int = K) -> float:
    """Share of the first k of `a` that are among the first k of `b`."""
    return len(set(a[:k]) & set(b[:k])) / k


def retrieval_agreement(reference_scores: np.ndarray, scores: np.ndarray, k: int = K) -> tuple[float, float]:
    """Mean top-k overlap and mean nDCG@k of the rankings by `scores` (queries × passages), with the
    reference scores as graded relevance (clipped at 0)."""
    reference_rankings = np.argsort(-reference_scores, axis=1, kind="stable")
    rankings = np.argsort(-scores, axis=1, kind="stable")
    relevance = np.clip(reference_scores, 0.0, None)
    overlap = np.mean([top_k_overlap(r, o, k) for r, o in zip(rankings, reference_rankings)])
    ndcg = np.mean([ndcg_at_k(rel, r, k) for rel, r in zip(relevance, rankings)])
    return float(overlap), float(ndcg)


def random_ndcg(reference_scores: np.ndarray, k: int = K, seed: int = 0) -> float:
    """nDCG@k of random rankings: the floor the retrieval column should be read against."""
    rng = np.random.default_rng(seed)
    relevance = np.clip(reference_scores, 0.0, None)
    return float(np.mean([ndcg_at_k(rel, rng.permutation(len(rel)), k) for rel in relevance]))


def pareto_front(points: Sequence[tuple[float, ...]]) -> list[bool]:
    """For each (size, quality, ...): True when no other point is at most as large and at least as good
    in every quality, one of them strictly."""
    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return a != b and a[0] <= b[0] and all(x >= y for x, y in zip(a[1:], b[1:]))

    return [not any(dominates(other, point) for other in points) for point in points]


def type_shares(summary: GGUFSummary) -> dict[str, float]:
    """GGML type → share of the file's parameters, largest first: what llama.cpp really wrote."""
    total = sum(summary.tensor_elements.values())
    return {name: count / total for name, count in summary.tensor_elements.most_common()}


def effective_types(summary: GGUFSummary) -> str:
    """`type_shares` as text, e.g. "Q4_K 65% · Q8_0 35% · F32 <1%"."""
    return " · ".join(f"{t} {share:.0%}" if share >= 0.005 else f"{t} <1%" for t, share in type_shares(summary).items())
