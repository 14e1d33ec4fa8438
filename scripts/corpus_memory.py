"""Peak memory of `granite-gguf embed-corpus` against corpus size: it should stay flat.

For each size, writes a JSONL corpus of that many rows (lines cut from the probe set), runs the
command in a child process and reads the child's peak RSS from the kernel (getrusage of children,
one child per measurement, each in its own process so the peaks do not mix).

    .venv/bin/python scripts/corpus_memory.py out/tiny-gemma3-f16.gguf --rows 10000 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def write_corpus(path: Path, rows: int) -> None:
    from granite_gguf.probes import probe_texts

    lines = [text.replace("\n", " ")[:60] for text in probe_texts()]
    with path.open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"id": i, "text": lines[i % len(lines)]}) + "\n")


def measure(gguf: Path, corpus: Path, out: Path, batch_rows: int) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one embed-corpus run, measured in a fresh process."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [sys.executable, "-m", "granite_gguf.cli", "embed-corpus", str(corpus), "--model", str(gguf), "--out",
               str(out), "--batch-rows", str(batch_rows), "--no-progress"]
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    seconds, max_rss_kib = result.stdout.split()
    return float(seconds), int(max_rss_kib) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-rows", type=int, default=1024)
    args = parser.parse_args(argv)
    print("| rows | input MiB | seconds | rows/s | peak RSS MiB |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="corpus-memory-") as tmp:
        for rows in args.rows:
            corpus = Path(tmp) / f"corpus-{rows}.jsonl"
            write_corpus(corpus, rows)
            seconds, peak = measure(args.gguf, corpus, Path(tmp) / f"out-{rows}", args.batch_rows)
            print(f"| {rows:,} | {corpus.stat().st_size / 2**20:.1f} | {seconds:.1f} | {rows / seconds:.0f} | "
                  f"{peak:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
