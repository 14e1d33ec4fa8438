"""Quality against size of every quantization type and recipe of one checkpoint (docs/quality.md).

    .venv/bin/python scripts/quality_table.py CHECKPOINT [--texts N] [--types f16,q8_0,...] [--workdir DIR]

Writes the set with `convert_set`, runs the fp32 PyTorch reference once, then per file measures (with
verify's own `measure`, one run over the probes and the retrieval texts; retrieval metrics and the
Pareto front from granite_gguf.quality): size,
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granite_gguf.bindings.embedder import Embedder, usable_threads
from granite_gguf.convert.quantize import convert_set
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.probes import probe_texts
from granite_gguf.quality import (
    N_PASSAGES,
    QUERY_EVERY,
    RetrievalProbe,
    effective_types,
    pareto_front,
    random_ndcg,
    retrieval_agreement,
    retrieval_probe,
)
from granite_gguf.verify import Reference, default_threshold, measure, run_reference

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TYPES = ",".join(["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", *(t.label for t in OutType if t.is_recipe)])


@dataclass
class Row:
    label: str
    file: str
    size: int
    parameters: int
    types: str  # effective GGML types, share of parameters
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


def row(label: str, path: Path, reference: Reference, n_probes: int, retrieval: RetrievalProbe) -> Row:
    """verify's measurement of the file (probes and retrieval texts in one run), and the retrieval agreement."""
    with Embedder(path, max_tokens=reference.needed) as embedder:
        metrics = measure(embedder, reference)
        threshold = default_threshold(embedder.header)
    summary = embedder.summary
    parameters = sum(summary.tensor_elements.values())
    probes = metrics.head(n_probes)
    overlap, ndcg = retrieval_agreement(retrieval.scores(reference.vectors[n_probes:]), retrieval.scores(metrics.vectors[n_probes:]))
    return Row(
        label=label, file=path.name, size=path.stat().st_size, parameters=parameters,
        types=effective_types(summary),
        cosine_min=probes.cosine_min, cosine_mean=probes.cosine_mean, cosine_p1=probes.cosine_p1, nmse=probes.nmse,
        overlap=overlap, ndcg=ndcg, token_mismatches=len(metrics.mismatches), threshold=threshold,
    )


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
        lines.append(
            f"| {r.label} | {r.file} | {r.size:,} | {r.size / r.parameters:.3f} | {r.types} | {r.cosine_min:.5f} "
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
    texts = probes + retrieval.texts
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        files = convert_set(open_checkpoint(args.checkpoint), workdir, outputs, model_name=name)
        print(f"wrote {len(files)} files; running the fp32 reference on {len(texts)} texts", flush=True)
        reference = run_reference(args.checkpoint, texts)
        rows = []
        for result in files:
            rows.append(row(result.output.label, result.path, reference, len(probes), retrieval))
            print(f"{result.output.label}: cosine min {rows[-1].cosine_min:.5f}, nDCG@10 {rows[-1].ndcg:.4f}", flush=True)
    rows.sort(key=lambda r: -r.size)
    for r, on_front in zip(rows, pareto_front([(r.size, r.cosine_mean) for r in rows])):
        r.pareto = on_front
    floor = random_ndcg(retrieval.scores(reference.vectors[len(probes):]))
    picture = args.doc.parent / f"quality-{name}.png"
    plot(rows, name, picture)
    section = markdown(name, rows, n_probes=len(probes), floor=floor, seconds=time.monotonic() - started, plot=picture)
    write_section(args.doc, name, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
