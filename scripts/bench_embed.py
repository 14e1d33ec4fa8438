"""Embedding throughput: the bindings (GGUF via llama-cpp-python) against PyTorch (sentence-transformers, fp32).

Each side runs in its own worker process that loads its model once; the parent alternates them
round by round on the same documents, so both see the same machine state. Documents are cut from
the multilingual probe set to a token length with the checkpoint's own tokenizer. Prints docs/s per
round, medians and the ratio bindings/PyTorch; --markdown appends the table to a file.

    .venv/bin/python scripts/bench_embed.py /tmp/full97m --types f16 q8_0 --tokens 512 8192
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from granite_gguf.bindings.embedder import DEFAULT_BATCH_TOKENS


@dataclass
class Case:
    name: str  # "pytorch-fp32" or "gguf-q8_0"
    tokens: int
    docs_per_s: list[float]


def make_documents(checkpoint: Path, tokens: int, count: int) -> list[str]:
    """`count` texts of about `tokens` tokens (special tokens included), cut from the probe set."""
    from tokenizers import Tokenizer

    from granite_gguf.probes import probe_texts

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    ids = tokenizer.encode(" ".join(probe_texts()), add_special_tokens=False).ids
    content = tokens - 2
    while len(ids) < content * count:
        ids = ids + ids
    return [tokenizer.decode(ids[i * content:(i + 1) * content]) for i in range(count)]


def pytorch_worker(connection: Connection, checkpoint: str, threads: int, _: int) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(checkpoint, device="cpu", local_files_only=True)
    model.max_seq_length = 8192
    connection.send("ready")
    while (job := connection.recv()) is not None:
        docs, batch_size = job
        with torch.inference_mode():
            started = time.perf_counter()
            model.encode(docs, batch_size=batch_size, normalize_embeddings=True)
        connection.send(time.perf_counter() - started)


def gguf_worker(connection: Connection, gguf: str, threads: int, batch_tokens: int) -> None:
    from granite_gguf.bindings.embedder import Embedder

    embedder = Embedder(gguf, n_threads=threads, batch_tokens=batch_tokens)
    connection.send("ready")
    while (job := connection.recv()) is not None:
        docs, _ = job
        started = time.perf_counter()
        embedder.encode(docs)
        connection.send(time.perf_counter() - started)
    embedder.close()


def ensure_gguf(checkpoint: Path, outtype: str, folder: Path) -> Path:
    from granite_gguf.convert.source import open_checkpoint
    from granite_gguf.convert.types import OutType
    from granite_gguf.convert.writer import convert

    path = folder / f"{checkpoint.name}-{outtype}.gguf"
    if not path.exists():
        convert(open_checkpoint(str(checkpoint)), path, OutType.parse(outtype))
    return path


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {len(os.sched_getaffinity(0))} usable CPUs, {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="full-size checkpoint folder (scripts/build_full_size_checkpoint.py)")
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[512, 8192])
    parser.add_argument("--docs", type=int, default=16, help="documents per round at 512 tokens (scaled down for longer)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-tokens", nargs="+", type=int, default=[DEFAULT_BATCH_TOKENS],
                        help="Embedder token budgets per decode to compare (default: the Embedder's)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--gguf-dir", type=Path, default=Path("/tmp/granite-gguf-bench"))
    parser.add_argument("--markdown", type=Path, help="append the result table to this file")
    args = parser.parse_args()
    args.gguf_dir.mkdir(parents=True, exist_ok=True)

    context = mp.get_context("spawn")
    workers: dict[str, tuple[mp.process.BaseProcess, Connection]] = {}
    targets = {"pytorch-fp32": (pytorch_worker, str(args.checkpoint), 0)}
    for outtype in args.types:
        gguf = str(ensure_gguf(args.checkpoint, outtype, args.gguf_dir))
        for budget in args.batch_tokens:
            suffix = "" if args.batch_tokens == [DEFAULT_BATCH_TOKENS] else f"@{budget}"
            targets[f"gguf-{outtype}{suffix}"] = (gguf_worker, gguf, budget)
    for name, (function, model, budget) in targets.items():
        parent_end, child_end = context.Pipe()
        process = context.Process(target=function, args=(child_end, model, args.threads, budget), daemon=True)
        process.start()
        assert parent_end.recv() == "ready"
        workers[name] = (process, parent_end)

    cases: list[Case] = []
    for tokens in args.tokens:
        count = max(2, args.docs * 512 // tokens)
        docs = make_documents(args.checkpoint, tokens, count)
        batch_size = max(1, 4096 // tokens)  # PyTorch: 8 documents of 512 tokens per forward pass
        round_cases = {name: Case(name, tokens, []) for name in workers}
        for round_index in range(args.rounds):
            for name, (_, connection) in workers.items():
                connection.send((docs, batch_size))
                seconds = connection.recv()
                round_cases[name].docs_per_s.append(count / seconds)
                print(f"{tokens:>5} tokens  round {round_index + 1}  {name:<20} {count / seconds:8.4g} docs/s", flush=True)
        cases += round_cases.values()
    for process, connection in workers.values():
        connection.send(None)
        process.join(timeout=60)

    lines = [f"checkpoint `{args.checkpoint.name}`, {args.threads} threads, {args.rounds} rounds; machine: {machine()}", "",
             "| tokens/doc | runner | docs/s per round | median docs/s | ratio vs PyTorch fp32 |", "|---|---|---|---|---|"]
    for case in cases:
        reference = next(c for c in cases if c.tokens == case.tokens and c.name == "pytorch-fp32")
        ratio = statistics.median(case.docs_per_s) / statistics.median(reference.docs_per_s)
        rounds = ", ".join(f"{v:.3g}" for v in case.docs_per_s)
        lines.append(f"| {case.tokens} | {case.name} | {rounds} | {statistics.median(case.docs_per_s):.3g} | {ratio:.2f}× |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as out:
            out.write(table + "\n\n")


if __name__ == "__main__":
    main()
