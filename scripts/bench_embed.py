"""Embedding throughput: the bindings (GGUF via llama-cpp-python) against PyTorch (sentence-transformers, fp32),
ONNX Runtime (fp32 and dynamic int8, exported from the same checkpoint) and OpenVINO (the IR of the same export
at the CPU plugin's default precision and with f32 forced, and its NNCF post-training int8 quantization).

Each runner runs in its own worker process that loads its model once; the parent alternates them
round by round on the same documents, so all see the same machine state. Documents are cut from
the multilingual probe set to a token length with the checkpoint's own tokenizer. Prints docs/s per
round, medians, the ratio to PyTorch and each runner's cosine to PyTorch fp32 on the same documents
(min and mean over them); --markdown appends the table to a file. `--layouts 1x2 2x1`
runs each GGUF type with those Embedder worker layouts (workers x threads).

`--cold-start` instead times whole processes, one sentence each, rounds interleaved: `granite-gguf
embed` on each GGUF type, on a first run and with its check remembered, against a sentence-transformers
one-shot (wall time to the printed vector, peak RSS from wait4).

    .venv/bin/python scripts/bench_embed.py /tmp/full97m --types f16 q8_0 q4_0 --tokens 512 8192 --onnx
    .venv/bin/python scripts/bench_embed.py /tmp/full97m --types q4_0 iq4_nl --tokens 512 80 --onnx --openvino
    .venv/bin/python scripts/bench_embed.py /tmp/full97m --types q4_0 --cold-start
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granite_gguf.bindings.embedder import DEFAULT_BATCH_TOKENS
from granite_gguf.throughput import (
    PYTORCH_BATCH_TOKENS,
    Bench,
    Kind,
    Runner,
    export_onnx,
    export_openvino,
    machine,
    make_documents,
)


@dataclass
class Case:
    name: str  # "pytorch-fp32" or "gguf-q8_0 2x1"
    tokens: int
    docs_per_s: list[float]
    cosine_min: float
    cosine_mean: float


# Runs one command and prints the time to its first line of output (the vector), its wall time, peak
# RSS and exit code. Linux keeps the larger of the parent's and the child's high-water RSS across fork
# and exec, so the command must be started by a small process: this benchmark's own (which may have
# converted files in memory) would inflate it.
LAUNCHER = """import os, sys, time
read_end, write_end = os.pipe()
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)])
os.close(write_end)
with os.fdopen(read_end, "rb") as out:
    out.readline()
    first = time.perf_counter() - started
    out.read()
_, status, usage = os.wait4(pid, 0)
print(first, time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


@dataclass
class ColdRuns:
    """One command's rounds: seconds to its first output line, wall seconds, peak RSS in MiB."""

    first: list[float]
    wall: list[float]
    peak: list[float]


def cold_start(checkpoint: Path, ggufs: dict[str, Path], rounds: int, threads: int) -> list[str]:
    """Whole-process time to the first vector, wall time and peak RSS, one sentence, rounds interleaved. Each GGUF
    twice: a first run (an empty cache folder each round, so the file is checked) and a later run (its
    check remembered by an untimed `granite-gguf check` beforehand, granite_gguf/gguf_file/remembered.py)."""
    sentence = "A sentence to embed, as a one-shot command would."
    one_shot = ("import sys\nfrom sentence_transformers import SentenceTransformer\n"
                "m = SentenceTransformer(sys.argv[1], device='cpu', local_files_only=True)\n"
                "print(m.encode([sys.argv[2]])[0][:4])")
    caches = Path(tempfile.mkdtemp(prefix="cold-start-"))
    commands: dict[str, tuple[list[str], str | None]] = {
        "sentence-transformers one-shot": ([sys.executable, "-c", one_shot, str(checkpoint), sentence], None)}
    for label, gguf in ggufs.items():
        embed = [sys.executable, "-m", "granite_gguf.cli", "embed", str(gguf), sentence, "--threads", str(threads)]
        remembered = str(caches / f"remembered-{label}")
        subprocess.run([sys.executable, "-m", "granite_gguf.cli", "check", str(gguf)], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, GRANITE_GGUF_CACHE=remembered))
        commands[f"granite-gguf embed {label}, first run"] = (embed, "")  # "": a new empty cache per round
        commands[f"granite-gguf embed {label}, check remembered"] = (embed, remembered)
        # the same command through main() without quick_exit: the model freed and the interpreter torn down
        teardown = [sys.executable, "-c", "import sys; from granite_gguf.cli import main; sys.exit(main(sys.argv[1:]))",
                    *embed[3:]]
        commands[f"granite-gguf embed {label}, check remembered, full teardown"] = (teardown, remembered)
    runs = {name: ColdRuns([], [], []) for name in commands}
    try:
        _time_rounds(commands, rounds, caches, runs)
    finally:
        shutil.rmtree(caches)
    reference = statistics.median(runs["sentence-transformers one-shot"].wall)
    lines = [f"cold start, one sentence, whole process, {rounds} rounds; machine: {machine()}", "",
             "| command | wall s per round | median wall s | vs one-shot | median s to the vector | median peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    for name, run in runs.items():
        median = statistics.median(run.wall)
        rounds_text = ", ".join(f"{v:.2f}" for v in run.wall)
        lines.append(f"| {name} | {rounds_text} | {median:.2f} | {median / reference:.2f}× | "
                     f"{statistics.median(run.first):.2f} | {statistics.median(run.peak):.0f} |")
    return lines


def _time_rounds(commands: dict[str, tuple[list[str], str | None]], rounds: int, caches: Path,
                 runs: dict[str, ColdRuns]) -> None:
    """Each command once per round, started by LAUNCHER, with its cache folder ("": a new one)."""
    for round_index in range(rounds):
        for name, (command, cache) in commands.items():
            env = dict(os.environ)
            if cache is not None:
                env["GRANITE_GGUF_CACHE"] = cache or tempfile.mkdtemp(dir=caches)
            measured = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True,
                                      check=True, env=env)
            first_text, wall_text, rss_kib, exit_code = measured.stdout.split()
            if int(exit_code):
                raise SystemExit(f"{name}: exit {exit_code}")
            first, wall, peak = float(first_text), float(wall_text), int(rss_kib) / 1024
            runs[name].first.append(first)
            runs[name].wall.append(wall)
            runs[name].peak.append(peak)
            print(f"cold start round {round_index + 1}  {name:<52} {wall:6.2f} s (vector at {first:.2f} s)  "
                  f"{peak:6.0f} MiB", flush=True)


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
    parser.add_argument("--flash-attn", nargs="+", choices=["on", "off"], default=["on"],
                        help="GGUF runners with llama.cpp's flash attention on and/or off (default: on, the Embedder's)")
    parser.add_argument("--llama-lib", type=Path,
                        help="also every GGUF runner on the libllama in this folder (another llama.cpp build: LLAMA_CPP_LIB_PATH)")
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime fp32 and int8 (needs the bench extra)")
    parser.add_argument("--openvino", action="store_true",
                        help="also OpenVINO: the IR of the ONNX export at the plugin's default precision and at f32, and NNCF int8")
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

    runners = [Runner("pytorch-fp32", Kind.PYTORCH, str(args.checkpoint), args.threads)]
    if args.onnx or args.openvino:
        fp32, int8 = export_onnx(args.checkpoint, args.gguf_dir)
    if args.onnx:
        runners += [Runner("onnxruntime-fp32", Kind.ONNX, str(fp32), args.threads),
                    Runner("onnxruntime-int8", Kind.ONNX, str(int8), args.threads)]
    if args.openvino:
        ir, ir_int8 = export_openvino(fp32, args.checkpoint, args.gguf_dir)
        runners += [Runner("openvino-default", Kind.OPENVINO, str(ir), args.threads),
                    Runner("openvino-f32", Kind.OPENVINO, str(ir), args.threads, precision="f32"),
                    Runner("openvino-int8", Kind.OPENVINO, str(ir_int8), args.threads)]
    layouts: list[tuple[int, ...] | None] = [tuple(int(n) for n in layout.split("x")) for layout in args.layouts] or [None]
    for outtype in args.types:
        gguf = str(ensure_gguf(args.checkpoint, outtype, args.gguf_dir))
        for budget in args.batch_tokens:
            for layout in layouts:
                for flash in args.flash_attn:
                    name = f"gguf-{outtype}" + ("" if args.batch_tokens == [DEFAULT_BATCH_TOKENS] else f"@{budget}")
                    name += "" if args.flash_attn == ["on"] else f" fa-{flash}"
                    if layout:
                        runners.append(Runner(f"{name} {layout[0]}x{layout[1]}", Kind.GGUF, gguf, layout[0] * layout[1],
                                              workers=layout[0], batch_tokens=budget, flash_attn=flash == "on"))
                    else:
                        runners.append(Runner(name, Kind.GGUF, gguf, args.threads, batch_tokens=budget, flash_attn=flash == "on"))

    if args.llama_lib:
        runners += [dataclasses.replace(r, name=f"{r.name} @{args.llama_lib.name}", llama_lib=str(args.llama_lib))
                    for r in runners if r.kind is Kind.GGUF]
    cases: list[Case] = []
    with Bench(runners) as bench:
        for tokens in args.tokens:
            count = max(2, args.docs * 512 // tokens)
            docs = make_documents(args.checkpoint, tokens, count)

            def report(round_index: int, name: str, seconds: float, tokens: int = tokens, count: int = count) -> None:
                print(f"{tokens:>5} tokens  round {round_index}  {name:<24} {count / seconds:8.4g} docs/s", flush=True)

            batch = max(1, PYTORCH_BATCH_TOKENS // tokens)
            vectors = bench.vectors(docs, batch)  # untimed; also the warm-up (first-call costs)
            pytorch_vectors = np.asarray(vectors["pytorch-fp32"])
            seconds = bench.rounds(docs, batch, args.rounds, report)
            for name, values in seconds.items():
                cosines = np.sum(np.asarray(vectors[name]) * pytorch_vectors, axis=1)
                cases.append(Case(name, tokens, [count / s for s in values], float(cosines.min()), float(cosines.mean())))

    lines = [f"checkpoint `{args.checkpoint.name}`, {args.threads} threads, {args.rounds} rounds; machine: {machine()}", "",
             "| tokens/doc | runner | docs/s per round | median docs/s | ratio vs PyTorch fp32 | cosine to PyTorch fp32 min / mean |",
             "|---|---|---|---|---|---|"]
    for case in cases:
        reference = next(c for c in cases if c.tokens == case.tokens and c.name == "pytorch-fp32")
        ratio = statistics.median(case.docs_per_s) / statistics.median(reference.docs_per_s)
        rounds = ", ".join(f"{v:.3g}" for v in case.docs_per_s)
        lines.append(f"| {case.tokens} | {case.name} | {rounds} | {statistics.median(case.docs_per_s):.3g} | {ratio:.2f}× | "
                     f"{case.cosine_min:.5f} / {case.cosine_mean:.5f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as out:
            out.write(table + "\n\n")


if __name__ == "__main__":
    main()
