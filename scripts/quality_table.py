"""Quality against size of every quantization type and recipe of one checkpoint (docs/quality.md).

    .venv/bin/python scripts/quality_table.py CHECKPOINT [--texts N] [--types f16,q8_0,...] [--workdir DIR]

Writes the set with `convert_set`, runs the fp32 PyTorch reference once, then per file measures: size,
bytes per parameter, effective GGML types (share of parameters), cosine min / mean / 1st percentile and
NMSE against the reference on the probe set (all probes, or N evenly spaced ones), and agreement on a
multilingual retrieval probe: 200 passages of CLDR text, 50 queries that are a short span of one
passage each; every passage is ranked per query by cosine with the reference vectors and with the
file's, and the file's ranking is scored by top-10 overlap and nDCG@10 (graded relevance: the
reference cosine, clipped at 0). Rows on the Pareto front of (size, cosine mean) are marked.
The section for the checkpoint in docs/quality.md is replaced (or appended), and a plot of quality
against size is written to docs/quality-<checkpoint>.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granite_gguf.bindings.embedder import Embedder, usable_threads
from granite_gguf.convert.quantize import convert_set
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.corpus import cldr_sentences
from granite_gguf.probes import probe_texts
from granite_gguf.verify import Reference, default_threshold, run_reference

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TYPES = ",".join(["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", *(t.label for t in OutType if t.is_recipe)])
N_PASSAGES = 200
QUERY_EVERY = 4  # a query from every 4th passage: 50 queries
RUNS_PER_PASSAGE = 3  # consecutive CLDR runs per passage (about 200 characters)
K = 10


@dataclass
class RetrievalProbe:
    passages: list[str]
    queries: list[str]


@dataclass
class Row:
    label: str
    file: str
    size: int
    parameters: int
    types: dict[str, float]  # GGML type → share of parameters
    cosine_min: float
    cosine_mean: float
    cosine_p1: float
    nmse: float
    overlap: float
    ndcg: float
    token_mismatches: int = 0  # texts whose llama.cpp ids differ from HF's
    threshold: float = 0.0  # verify's default minimum cosine for this file
    pareto: bool = False

    @property
    def passes(self) -> bool:
        return self.token_mismatches == 0 and self.cosine_min >= self.threshold


def sample_probes(n: int | None) -> list[str]:
    """All probe texts, or `n` evenly spaced ones (the first and the last, the longest, included)."""
    texts = probe_texts()
    if n is None or n >= len(texts):
        return list(texts)
    return [texts[i] for i in np.unique(np.linspace(0, len(texts) - 1, n).round().astype(int))]


def retrieval_probe() -> RetrievalProbe:
    """Passages: runs of CLDR names spread over all locales; queries: the first three names of the
    middle run of every 4th passage (so each query has one source passage, in its own language)."""
    runs = cldr_sentences()
    starts = [k * (len(runs) - RUNS_PER_PASSAGE) // N_PASSAGES for k in range(N_PASSAGES)]
    passages = [" ".join(runs[i : i + RUNS_PER_PASSAGE]) for i in starts]
    queries = [", ".join(runs[i + 1].split(", ")[:3]) for i in starts[::QUERY_EVERY]]
    return RetrievalProbe(passages, queries)


def ndcg_at_k(relevance: np.ndarray, ranking: Sequence[int], k: int = K) -> float:
    """nDCG@k of `ranking` (passage indices, best first) with graded `relevance` per passage."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(np.sum(relevance[np.asarray(ranking[:k])] * discounts[: len(ranking[:k])]))
    ideal = float(np.sum(np.sort(relevance)[::-1][:k] * discounts))
    return dcg / ideal if ideal > 0 else 1.0


def top_k_overlap(a: Sequence[int], b: Sequence[int], k: int = K) -> float:
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


def mark_pareto(rows: list[Row]) -> None:
    """A row is on the front when no other row is at most as large and at least as good, one strictly."""
    for row in rows:
        row.pareto = not any(
            o.size <= row.size and o.cosine_mean >= row.cosine_mean and (o.size, o.cosine_mean) != (row.size, row.cosine_mean)
            for o in rows
        )


def measure(label: str, path: Path, reference: Reference, n_probes: int) -> Row:
    with Embedder(path, max_tokens=reference.longest) as embedder:
        mismatches = sum(embedder.tokenize(text) != ids for text, ids in zip(reference.texts, reference.token_ids))
        vectors = embedder.encode(reference.texts)
    summary = embedder.summary
    parameters = sum(summary.tensor_elements.values())
    reference_vectors = reference.vectors
    ref, ours = reference_vectors[:n_probes], vectors[:n_probes]
    cosines = np.sum(ref * ours, axis=1)
    nmse = float(np.mean(np.sum((ref - ours) ** 2, axis=1)) / np.mean(np.sum(ref**2, axis=1)))
    overlap, ndcg = retrieval_agreement(*_retrieval_scores(reference_vectors, vectors, n_probes))
    return Row(
        label=label, file=path.name, size=path.stat().st_size, parameters=parameters,
        types={t: n / parameters for t, n in summary.tensor_elements.most_common()},
        cosine_min=float(cosines.min()), cosine_mean=float(cosines.mean()),
        cosine_p1=float(np.percentile(cosines, 1)), nmse=nmse, overlap=overlap, ndcg=ndcg,
        token_mismatches=mismatches, threshold=default_threshold(embedder.header),
    )


def _retrieval_scores(reference: np.ndarray, vectors: np.ndarray, n_probes: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, file) cosines of queries × passages; the vectors are probes, passages, queries."""
    passages = slice(n_probes, n_probes + N_PASSAGES)
    queries = slice(n_probes + N_PASSAGES, None)
    return reference[queries] @ reference[passages].T, vectors[queries] @ vectors[passages].T


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {usable_threads()} threads used (of {os.cpu_count()} logical CPUs)"


def command_line() -> str:
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable
    return f"{python} {shlex.join(sys.argv)}"


def markdown(name: str, rows: list[Row], *, n_probes: int, floor: float, seconds: float, plot: Path) -> str:
    header = ("| type | file | size (bytes) | bytes/param | effective types (share of parameters) | cos min | cos mean "
              "| cos p1 | NMSE | top-10 overlap | nDCG@10 | token mismatches | verify threshold | Pareto |")
    lines = [
        f"<!-- quality-table:{name} -->",
        f"### {name}",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine()}; took {seconds:.0f} s.  ",
        (f"Probe texts: {n_probes}; retrieval probe: {N_PASSAGES} passages, {N_PASSAGES // QUERY_EVERY} queries "
         f"(nDCG@10 of a random ranking: {floor:.3f})."),
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        types = " · ".join(f"{t} {share:.0%}" if share >= 0.005 else f"{t} <1%" for t, share in r.types.items())
        lines.append(
            f"| {r.label} | {r.file} | {r.size:,} | {r.size / r.parameters:.3f} | {types} | {r.cosine_min:.5f} "
            f"| {r.cosine_mean:.6f} | {r.cosine_p1:.5f} | {r.nmse:.2e} | {r.overlap:.3f} | {r.ndcg:.4f} "
            f"| {r.token_mismatches} | {r.threshold} {'pass' if r.passes else '**FAIL**'} | {'★' if r.pareto else ''} |"
        )
    lines += ["", f"![quality against size, {name}]({plot.name})", f"<!-- /quality-table:{name} -->"]
    return "\n".join(lines)


def write_section(doc: Path, name: str, section: str) -> None:
    """Replace the checkpoint's section in `doc`, or append it."""
    text = doc.read_text() if doc.exists() else "# Quantization quality against size\n"
    pattern = re.compile(rf"<!-- quality-table:{re.escape(name)} -->.*?<!-- /quality-table:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    doc.write_text(text.rstrip("\n") + "\n")


def plot(rows: list[Row], name: str, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    sizes = np.array([r.size / 2**20 for r in rows])
    for ax, field, title in ((axes[0], "cosine_mean", "cosine mean vs fp32"), (axes[1], "ndcg", "nDCG@10 vs fp32 ranking")):
        values = np.array([getattr(r, field) for r in rows])
        front = [i for i in np.argsort(sizes) if rows[i].pareto]
        ax.plot(sizes[front], values[front], "-", color="tab:orange", zorder=1, label="Pareto front (size, cosine mean)")
        ax.scatter(sizes, values, c=["tab:orange" if r.pareto else "tab:blue" for r in rows], zorder=2)
        same: dict[tuple[float, float], list[str]] = {}  # identical files (fallbacks) share one label
        for x, y, r in zip(sizes, values, rows):
            same.setdefault((x, round(float(y), 7)), []).append(r.label)
        for (x, y), labels in same.items():
            ax.annotate(" = ".join(labels), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].set_xlabel("file size (MiB)")
    fig.suptitle(f"{name}: quality against file size")
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint folder")
    parser.add_argument("--texts", type=int, default=None, help="probe texts to use, evenly spaced (default: all)")
    parser.add_argument("--types", default=DEFAULT_TYPES, help=f"types and recipes (default: {DEFAULT_TYPES})")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the GGUF files here (default: a temporary folder)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "quality.md")
    args = parser.parse_args(argv)
    outputs = OutType.parse_list(args.types)
    name = Path(args.checkpoint.rstrip("/")).name
    started = time.monotonic()
    probes = sample_probes(args.texts)
    retrieval = retrieval_probe()
    texts = probes + retrieval.passages + retrieval.queries
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        files = convert_set(open_checkpoint(args.checkpoint), workdir, outputs, model_name=name)
        print(f"wrote {len(files)} files; running the fp32 reference on {len(texts)} texts", flush=True)
        reference = run_reference(args.checkpoint, texts)
        rows = []
        for result in files:
            rows.append(measure(result.output.label, result.path, reference, len(probes)))
            print(f"{result.output.label}: cosine min {rows[-1].cosine_min:.5f}, nDCG@10 {rows[-1].ndcg:.4f}", flush=True)
    rows.sort(key=lambda r: -r.size)
    mark_pareto(rows)
    floor = random_ndcg(_retrieval_scores(reference.vectors, reference.vectors, len(probes))[0])
    picture = args.doc.parent / f"quality-{name}.png"
    plot(rows, name, picture)
    section = markdown(name, rows, n_probes=len(probes), floor=floor, seconds=time.monotonic() - started, plot=picture)
    write_section(args.doc, name, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
