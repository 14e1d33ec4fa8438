"""`embed-corpus --ray` with 1 and 2 actors against the single-process job, side by side in one run.

Each configuration is the real command in a fresh process (Ray's cluster start and shutdown included,
as a user runs it), rounds interleaved so a change in the machine's load hits every configuration;
the table gives the median wall time, rows/s and the ratio to the single-process job.

    .venv/bin/python scripts/bench_ray.py out/tiny-gemma3-f16.gguf --rows 4000 --batch-rows 200 --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus_memory import write_corpus

CONFIGS = {
    "single process, 2 threads": ["--threads", "2"],
    "Ray, 1 actor x 2 threads": ["--ray", "--actors", "1", "--threads", "2"],
    "Ray, 1 actor x 1 thread": ["--ray", "--actors", "1", "--threads", "1"],
    "Ray, 2 actors x 1 thread": ["--ray", "--actors", "2", "--threads", "1"],
}


def run_once(gguf: Path, corpus: Path, out: Path, batch_rows: int, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "granite_gguf.cli", "embed-corpus", str(corpus), "--model", str(gguf), "--out",
               str(out), "--batch-rows", str(batch_rows), "--no-progress", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--batch-rows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, args.rows)
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for _ in range(args.rounds):
            for name, extra in CONFIGS.items():
                times[name].append(run_once(args.gguf, corpus, Path(tmp) / "out", args.batch_rows, extra))
    reference = statistics.median(times["single process, 2 threads"])
    print(f"{args.rows} rows, --batch-rows {args.batch_rows}, {args.rounds} rounds; median (all rounds)")
    print("| configuration | seconds | rows/s | vs single process |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{value:.1f}" for value in values)
        print(f"| {name} | {median:.1f} ({rounds}) | {args.rows / median:.0f} | {reference / median:.2f}x |")


if __name__ == "__main__":
    main()
