"""Embedding throughput: the bindings (GGUF via llama-cpp-python) against PyTorch (sentence-transformers, fp32)
and ONNX Runtime (fp32 and dynamic int8, exported from the same checkpoint).

Each runner runs in its own worker process that loads its model once; the parent alternates them
round by round on the same documents, so all see the same machine state. Documents are cut from
the multilingual probe set to a token length with the checkpoint's own tokenizer. Prints docs/s per
round, medians and the ratio to PyTorch; --markdown appends the table to a file. `--layouts 1x2 2x1`
runs each GGUF type with those Embedder worker layouts (workers x threads).

`--cold-start` instead times whole processes, one sentence each, rounds interleaved: `granite-gguf
embed` on each GGUF type against a sentence-transformers one-shot (wall time to the printed vector,
peak RSS from wait4).

    .venv/bin/python scripts/bench_embed.py /tmp/full97m --types f16 q8_0 q4_0 --tokens 512 8192 --onnx
    .venv/bin/python scripts/bench_embed.py /tmp/full97m --types q4_0 --cold-start
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


def onnx_worker(connection: Connection, onnx_file: str, threads: int, _: int) -> None:
    """ONNX Runtime on the exported encoder; CLS pooling and L2 as the checkpoint's sentence-transformers."""
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(Path(onnx_file).parent / "tokenizer.json"))
    connection.send("ready")
    while (job := connection.recv()) is not None:
        docs, batch_size = job
        started = time.perf_counter()
        for start in range(0, len(docs), batch_size):
            tokenizer.enable_padding()
            encodings = tokenizer.encode_batch(docs[start:start + batch_size])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0][:, 0]
            _ = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)  # the L2 step sentence-transformers does
        connection.send(time.perf_counter() - started)


def export_onnx(checkpoint: Path, folder: Path) -> tuple[Path, Path]:
    """fp32 ONNX of the checkpoint's encoder (torch.onnx.export) and its dynamic int8 quantization."""
    import shutil

    fp32, int8 = folder / f"{checkpoint.name}-fp32.onnx", folder / f"{checkpoint.name}-int8.onnx"
    shutil.copy(checkpoint / "tokenizer.json", folder / "tokenizer.json")
    if not fp32.exists():
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
        example = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
        torch.onnx.export(model, example, str(fp32), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8


def cold_start(checkpoint: Path, ggufs: dict[str, Path], rounds: int, threads: int) -> list[str]:
    """Whole-process time to the first vector and peak RSS, one sentence, rounds interleaved."""
    import subprocess
    import sys

    sentence = "A sentence to embed, as a one-shot command would."
    one_shot = ("import sys\nfrom sentence_transformers import SentenceTransformer\n"
                "m = SentenceTransformer(sys.argv[1], device='cpu', local_files_only=True)\n"
                "print(m.encode([sys.argv[2]])[0][:4])")
    commands = {"sentence-transformers one-shot": [sys.executable, "-c", one_shot, str(checkpoint), sentence]}
    for label, gguf in ggufs.items():
        commands[f"granite-gguf embed {label}"] = [sys.executable, "-m", "granite_gguf.cli", "embed", str(gguf),
                                                   sentence, "--threads", str(threads)]
    walls: dict[str, list[float]] = {name: [] for name in commands}
    peaks: dict[str, list[float]] = {name: [] for name in commands}
    for round_index in range(rounds):
        for name, command in commands.items():
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode:
                raise SystemExit(f"{name}: exit {process.returncode}")
            walls[name].append(wall)
            peaks[name].append(usage.ru_maxrss / 1024)
            print(f"cold start round {round_index + 1}  {name:<40} {wall:6.2f} s  {usage.ru_maxrss / 1024:6.0f} MiB", flush=True)
    reference = statistics.median(walls["sentence-transformers one-shot"])
    lines = [f"cold start, one sentence, whole process, {rounds} rounds; machine: {machine()}", "",
             "| command | wall s per round | median wall s | vs one-shot | median peak RSS MiB |", "|---|---|---|---|---|"]
    for name in commands:
        median = statistics.median(walls[name])
        rounds_text = ", ".join(f"{v:.2f}" for v in walls[name])
        lines.append(f"| {name} | {rounds_text} | {median:.2f} | {median / reference:.2f}× | {statistics.median(peaks[name]):.0f} |")
    return lines


def gguf_worker(connection: Connection, gguf: str, threads: int, batch_tokens: int, workers: int | None = None) -> None:
    from granite_gguf.bindings.embedder import Embedder

    embedder = Embedder(gguf, n_threads=threads, batch_tokens=batch_tokens, workers=workers)
    connection.send("ready")
    while (job := connection.recv()) is not None:
        docs, _ = job
        started = time.perf_counter()
        embedder.encode(docs)
        connection.send(time.perf_counter() - started)
    embedder.close()


def ensure_gguf(checkpoint: Path, outtype: str, folder: Path) -> Path:
    """The checkpoint as `outtype` in `folder` (gguf-py's writer or llama.cpp's quantizer), made once."""
    from granite_gguf.convert.quantize import convert_set
    from granite_gguf.convert.source import open_checkpoint
    from granite_gguf.convert.types import OutType, Writer
    from granite_gguf.convert.writer import convert

    output = OutType.parse(outtype)
    stem = f"{checkpoint.name}-{output.file_label}"  # convert_set appends "-mostly-<type>" when llama.cpp fell back
    exact = [path for path in sorted(folder.glob(f"{stem}*.gguf")) if path.stem == stem or path.stem.startswith(f"{stem}-mostly-")]
    if exact:
        return exact[0]
    if output.writer is Writer.GGUF_PY:
        path = folder / f"{checkpoint.name}-{output.file_label}.gguf"
        convert(open_checkpoint(str(checkpoint)), path, output)
        return path
    [result] = convert_set(open_checkpoint(str(checkpoint)), folder, [output], model_name=checkpoint.name)
    return result.path


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
    parser.add_argument("--layouts", nargs="+", default=[],
                        help="Embedder worker layouts WORKERSxTHREADS to run per type (default: the Embedder's own)")
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime fp32 and int8 (needs the bench extra)")
    parser.add_argument("--cold-start", action="store_true", help="time whole one-sentence processes instead")
    parser.add_argument("--gguf-dir", type=Path, default=Path("/tmp/granite-gguf-bench"))
    parser.add_argument("--markdown", type=Path, help="append the result table to this file")
    args = parser.parse_args()
    args.gguf_dir.mkdir(parents=True, exist_ok=True)

    if args.cold_start:
        ggufs = {outtype: ensure_gguf(args.checkpoint, outtype, args.gguf_dir) for outtype in args.types}
        table = "\n".join(cold_start(args.checkpoint, ggufs, args.rounds, args.threads))
        print("\n" + table)
        if args.markdown:
            with args.markdown.open("a", encoding="utf-8") as out:
                out.write(table + "\n\n")
        return

    context = mp.get_context("spawn")
    workers: dict[str, tuple[mp.process.BaseProcess, Connection]] = {}
    targets: dict[str, tuple] = {"pytorch-fp32": (pytorch_worker, str(args.checkpoint), 0)}
    if args.onnx:
        fp32, int8 = export_onnx(args.checkpoint, args.gguf_dir)
        targets["onnxruntime-fp32"] = (onnx_worker, str(fp32), 0)
        targets["onnxruntime-int8"] = (onnx_worker, str(int8), 0)
    layouts = [tuple(int(n) for n in layout.split("x")) for layout in args.layouts] or [None]
    for outtype in args.types:
        gguf = str(ensure_gguf(args.checkpoint, outtype, args.gguf_dir))
        for budget in args.batch_tokens:
            for layout in layouts:
                suffix = "" if args.batch_tokens == [DEFAULT_BATCH_TOKENS] else f"@{budget}"
                suffix += f" {layout[0]}x{layout[1]}" if layout else ""
                targets[f"gguf-{outtype}{suffix}"] = (gguf_worker, gguf, budget, layout)
    for name, (function, model, budget, *layout) in targets.items():
        parent_end, child_end = context.Pipe()
        threads, extra = args.threads, ()
        if layout and layout[0]:
            threads, extra = layout[0][0] * layout[0][1], (layout[0][0],)
        process = context.Process(target=function, args=(child_end, model, threads, budget, *extra), daemon=True)
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
