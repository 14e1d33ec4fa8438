"""Quality against size of every quantization type and recipe of one checkpoint (docs/quality.md).

    .venv/bin/python scripts/quality_table.py CHECKPOINT [--texts N] [--types f16,q8_0,...] [--workdir DIR]
        [--speed-docs 16] [--speed-short 128] [--speed-rounds 3] [--speed-group 4]

Writes the set with `convert_set`, runs the fp32 PyTorch reference once, then per file measures (with
verify's own `measure`, one run over the probes and the retrieval texts; retrieval metrics and the
Pareto front from granite_gguf.quality): size,
bytes per parameter, effective GGML types (share of parameters), cosine min / mean / 1st percentile and
NMSE against the reference on the probe set (all probes, or N evenly spaced ones), and agreement on a
multilingual retrieval probe: 200 passages of CLDR text, 50 queries that are a short span of one
passage each; every passage is ranked per query by cosine with the reference vectors and with the
file's, and the file's ranking is scored by top-10 overlap and nDCG@10 (graded relevance: the
reference cosine, clipped at 0). Rows on the Pareto front of (size, cosine mean) are marked.
Speed, in the same run (granite_gguf.throughput: one process per runner, rounds interleaved, medians):
docs/s on documents of 512 tokens and tokens/s on short texts (retrieval texts) for every file with
the Embedder's default worker layout, next to PyTorch fp32 (sentence-transformers) and ONNX Runtime
int8 (dynamic quantization of the same checkpoint's export). Rows on the Pareto front of (size, docs/s,
cosine mean) are marked. The section for the checkpoint in docs/quality.md is replaced (or appended),
and a plot of quality and speed against size is written to docs/quality-<checkpoint>.png.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granite_gguf.bindings.embedder import Embedder, default_layout, usable_threads
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
from granite_gguf.throughput import (
    DOC_TOKENS,
    PYTORCH_BATCH_TOKENS,
    SHORT_BATCH,
    Bench,
    Kind,
    Runner,
    count_tokens,
    export_onnx,
    machine,
    make_documents,
)
from granite_gguf.verify import Reference, gate_of, measure, run_reference

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TYPES = ",".join(["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_s", "q4_0", "iq4_nl",
                          *(t.label for t in OutType if t.is_recipe)])
REFERENCES = ("pytorch-fp32", "onnxruntime-int8")  # the runners every file's speed is compared with


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
    threshold: float | None = None  # verify's default minimum cosine for this file (None: the type has no gate yet)
    speed: Speed | None = None
    pareto: bool = False

    @property
    def gate(self) -> str:
        if self.threshold is None:
            return "no gate"
        passes = self.token_mismatches == 0 and self.cosine_min >= self.threshold
        return f"{self.threshold} {'pass' if passes else '**FAIL**'}"


def evenly_spaced(texts: list[str] | tuple[str, ...], n: int | None) -> list[str]:
    """All `texts`, or `n` evenly spaced ones (the first and the last included)."""
    if n is None or n >= len(texts):
        return list(texts)
    return [texts[i] for i in np.unique(np.linspace(0, len(texts) - 1, n).round().astype(int))]


def row(label: str, path: Path, reference: Reference, n_probes: int, retrieval: RetrievalProbe) -> Row:
    """verify's measurement of the file (probes and retrieval texts in one run), and the retrieval agreement."""
    with Embedder(path, max_tokens=reference.needed) as embedder:
        metrics = measure(embedder, reference)
        threshold = gate_of(embedder.header)
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


@dataclass(frozen=True)
class Speed:
    docs_per_s: float  # median over rounds, documents of DOC_TOKENS tokens
    tokens_per_s: float  # median over rounds, short texts
    docs_ratio: float  # to PyTorch fp32 timed in the same group
    tokens_ratio: float


def measure_speed(checkpoint: Path, files: dict[str, Path], onnx_dir: Path, *, docs: int, short: list[str],
                  rounds: int, group: int) -> dict[str, Speed]:
    """Every file (the Embedder's default layout) timed beside the REFERENCES, rounds interleaved, `group`
    files at a time: each llama.cpp context holds an output buffer of n_vocab floats per token (0.7-1 GB
    per context at 1,024 tokens on these vocabularies), so all files at once would not fit in memory.
    A file's ratios are to the PyTorch run of its own group; the references' figures are medians over groups."""
    threads = usable_threads()  # GGUF runners split them by the Embedder's default layout
    _, int8 = export_onnx(checkpoint, onnx_dir)
    references = [Runner("pytorch-fp32", Kind.PYTORCH, str(checkpoint), threads),
                  Runner("onnxruntime-int8", Kind.ONNX, str(int8), threads)]
    documents = make_documents(checkpoint, DOC_TOKENS, docs)
    short_tokens = count_tokens(checkpoint, short)

    def report(round_index: int, name: str, seconds: float) -> None:
        print(f"speed round {round_index}  {name:<20} {seconds:7.2f} s", flush=True)

    labels = list(files)
    measured: dict[str, list[Speed]] = {}
    for start in range(0, len(labels), group):
        runners = references + [Runner(label, Kind.GGUF, str(files[label]), threads) for label in labels[start:start + group]]
        with Bench(runners) as bench:
            bench.warm_up(documents[:2], PYTORCH_BATCH_TOKENS // DOC_TOKENS)
            long = {name: docs / statistics.median(values)
                    for name, values in bench.rounds(documents, PYTORCH_BATCH_TOKENS // DOC_TOKENS, rounds, report).items()}
            brief = {name: short_tokens / statistics.median(values)
                     for name, values in bench.rounds(short, SHORT_BATCH, rounds, report).items()}
        for name in long:
            speed = Speed(long[name], brief[name], long[name] / long["pytorch-fp32"], brief[name] / brief["pytorch-fp32"])
            measured.setdefault(name, []).append(speed)
    return {name: Speed(*(statistics.median(getattr(s, field) for s in speeds)
                          for field in ("docs_per_s", "tokens_per_s", "docs_ratio", "tokens_ratio")))
            for name, speeds in measured.items()}


def front_speeds(rows: list[Row]) -> list[float]:
    """Speed per row for the Pareto front (docs/s as a ratio to the PyTorch run of the file's group): files with the same size, type mix and vectors (llama.cpp's
    fallbacks write the same file under two labels) do the same work, so they share their mean speed
    instead of letting round-to-round noise put one on the front and drop its twin."""
    groups: dict[tuple[int, str, float], list[float]] = {}
    for r in rows:
        assert r.speed is not None
        groups.setdefault((r.size, r.types, r.cosine_mean), []).append(r.speed.docs_ratio)
    return [statistics.mean(groups[(r.size, r.types, r.cosine_mean)]) for r in rows]


def command_line() -> str:
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable
    return f"{python} {shlex.join(sys.argv)}"


def markdown(name: str, rows: list[Row], references: dict[str, Speed], *, n_probes: int, n_short: int, n_docs: int,
             rounds: int, group: int, floor: float, seconds: float, plot: Path) -> str:
    header = ("| type | file | size (bytes) | bytes/param | effective types (share of parameters) | cos min | cos mean "
              f"| cos p1 | NMSE | top-10 overlap | nDCG@10 | docs/s ({DOC_TOKENS} tok) | tokens/s (short) "
              "| token mismatches | verify threshold | Pareto |")
    pytorch, onnx = references["pytorch-fp32"], references["onnxruntime-int8"]

    def speed(s: Speed | None) -> str:
        assert s is not None
        return f"{s.docs_per_s:.3g} ({s.docs_ratio:.2f}×) | {s.tokens_per_s:,.0f} ({s.tokens_ratio:.2f}×)"

    lines = [
        f"<!-- quality-table:{name} -->",
        f"### {name}",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine()}; took {seconds:.0f} s.  ",
        (f"Probe texts: {n_probes}; retrieval probe: {N_PASSAGES} passages, {N_PASSAGES // QUERY_EVERY} queries "
         f"(nDCG@10 of a random ranking: {floor:.3f}).  "),
        (f"Speed (same run, one process per runner, {rounds} interleaved rounds, medians; files timed {group} at a "
         f"time beside the references, × = ratio to PyTorch fp32 of the same group): {n_docs} documents of {DOC_TOKENS} "
         f"tokens and {n_short} short texts, GGUF files with the Embedder's default layout "
         f"({default_layout().workers}x{default_layout().threads}). PyTorch fp32 (sentence-transformers): "
         f"{pytorch.docs_per_s:.3g} docs/s, {pytorch.tokens_per_s:,.0f} tokens/s; ONNX Runtime int8: "
         f"{speed(onnx).replace(' | ', ' docs/s, ')} tokens/s. Pareto: ★ = on the front of (size, docs/s, cosine mean)."),
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.file} | {r.size:,} | {r.size / r.parameters:.3f} | {r.types} | {r.cosine_min:.5f} "
            f"| {r.cosine_mean:.6f} | {r.cosine_p1:.5f} | {r.nmse:.2e} | {r.overlap:.3f} | {r.ndcg:.4f} "
            f"| {speed(r.speed)} "
            f"| {r.token_mismatches} | {r.gate} | {'★' if r.pareto else ''} |"
        )
    lines += ["", f"![quality and speed against size, {name}]({plot.name})", f"<!-- /quality-table:{name} -->"]
    return "\n".join(lines)


def write_section(doc: Path, name: str, section: str) -> None:
    """Replace the checkpoint's section in `doc`, or append it."""
    text = doc.read_text() if doc.exists() else "# Quantization quality against size\n"
    pattern = re.compile(rf"<!-- quality-table:{re.escape(name)} -->.*?<!-- /quality-table:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    doc.write_text(text.rstrip("\n") + "\n")


def plot(rows: list[Row], references: dict[str, Speed], name: str, dest: Path) -> None:
    """Cosine mean, docs/s and nDCG@10 against file size; the Pareto front (size, docs/s, cosine mean) in orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("cosine_mean", "cosine mean vs fp32"), ("docs_ratio", f"docs/s ({DOC_TOKENS} tokens)\n÷ PyTorch fp32"),
              ("ndcg", "nDCG@10 vs fp32 ranking"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 10), sharex=True)
    sizes = np.array([r.size / 2**20 for r in rows])
    front = [i for i in np.argsort(sizes) if rows[i].pareto]
    for ax, (field, title) in zip(axes, panels):
        values = np.array([getattr(r.speed if field == "docs_ratio" else r, field) for r in rows])
        ax.plot(sizes[front], values[front], "-", color="tab:orange", zorder=1, label="Pareto front (size, docs/s, cosine mean)")
        ax.scatter(sizes, values, c=["tab:orange" if r.pareto else "tab:blue" for r in rows], zorder=2)
        same: dict[tuple[float, float], list[str]] = {}  # identical files (fallbacks) share one label
        for x, y, r in zip(sizes, values, rows):
            same.setdefault((x, round(float(y), 7)), []).append(r.label)
        for (x, y), labels in same.items():
            ax.annotate(" = ".join(labels), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15)
    speed_axis = axes[1]
    for (runner, speed), style in zip(references.items(), ("--", ":")):
        speed_axis.axhline(speed.docs_ratio, linestyle=style, color="gray", label=f"{runner}: {speed.docs_per_s:.3g} docs/s")
    speed_axis.legend(loc="best", fontsize=8)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("file size (MiB)")
    fig.suptitle(f"{name}: quality and speed against file size")
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
    parser.add_argument("--speed-docs", type=int, default=16, help=f"documents of {DOC_TOKENS} tokens per speed round")
    parser.add_argument("--speed-short", type=int, default=128, help="short texts (from the retrieval probe) per speed round")
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--speed-group", type=int, default=4, help="files timed at a time beside the references (memory)")
    args = parser.parse_args(argv)
    outputs = OutType.parse_list(args.types)
    name = Path(args.checkpoint.rstrip("/")).name
    started = time.monotonic()
    probes = evenly_spaced(probe_texts(), args.texts)  # the longest probe is the last
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
        short = evenly_spaced(retrieval.texts, args.speed_short)
        speeds = measure_speed(Path(args.checkpoint), {r.output.label: r.path for r in files}, workdir,
                               docs=args.speed_docs, short=short, rounds=args.speed_rounds, group=args.speed_group)
    for r in rows:
        r.speed = speeds[r.label]
    references = {runner: speeds[runner] for runner in REFERENCES}
    rows.sort(key=lambda r: -r.size)
    for r, on_front in zip(rows, pareto_front([(r.size, speed, r.cosine_mean) for r, speed in zip(rows, front_speeds(rows))])):
        r.pareto = on_front
    floor = random_ndcg(retrieval.scores(reference.vectors[len(probes):]))
    picture = args.doc.parent / f"quality-{name}.png"
    plot(rows, references, name, picture)
    section = markdown(name, rows, references, n_probes=len(probes), n_short=len(short), n_docs=args.speed_docs,
                       rounds=args.speed_rounds, group=args.speed_group, floor=floor, seconds=time.monotonic() - started, plot=picture)
    write_section(args.doc, name, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
