"""Benchmark checkpoint → GGUF conversion: wall time and peak RSS of `granite-gguf convert`, optionally
side by side with upstream llama.cpp's convert_hf_to_gguf.py, runs interleaved (ours, upstream, ours, …).

    python scripts/bench_convert.py /tmp/full311m --runs 3 --upstream LLAMA_CPP/convert_hf_to_gguf.py \
        --gpt2-vocab LLAMA_CPP/models/ggml-vocab-gpt-2.gguf
    python scripts/bench_convert.py /tmp/full311m --runs 2 --quant-set f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0

Upstream refuses tokenizers it does not know by hash ("BPE pre-tokenizer was not recognized"); the
refusal is reported as such. With --gpt2-vocab, both tools are also measured on a copy of the
checkpoint (weights symlinked, nothing downloaded) whose tokenizer is GPT-2's, rebuilt from the
vocab-only GGUF that llama.cpp ships for its tokenizer tests, which upstream recognizes: that pair
compares the tensor-conversion cost like for like.

With --quant-set, the one-command set (`convert SRC --outdir D --quant LIST`: the checkpoint read
once) is measured against converting once per type, as a user would without it (`--outtype f16 -o F`
for f16, which needs no quantizer, and `--quant TYPE` for each other type), runs interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

GPT2_SPECIAL = "<|endoftext|>"
POLL_SECONDS = 0.01
OURS = str(Path(sys.executable).with_name("granite-gguf"))  # the venv's console script


@dataclass(frozen=True)
class Job:
    """One tool on one checkpoint at one output type."""

    tool: str  # "ours" or "upstream"
    checkpoint: Path
    checkpoint_label: str
    outtype: str


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_rss_mib: float  # exact: the kernel's RSS high-water mark of the child
    peak_anon_mib: float  # sampled every POLL_SECONDS: anonymous memory only (heap, arrays), no file pages
    returncode: int
    last_stderr_line: str


@dataclass
class Result:
    job: Job
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> list[Run]:
        return [run for run in self.runs if run.returncode == 0]


def command(job: Job, out: Path, upstream: Path | None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that convert `job.checkpoint` into `out`."""
    env = dict(os.environ)
    if job.tool == "ours":
        return [OURS, "convert", str(job.checkpoint), "-o", str(out), "--outtype", job.outtype, "--no-progress"], env
    assert upstream is not None
    env["PYTHONPATH"] = str(upstream.parent / "gguf-py")  # the vendored gguf-py, not the installed one
    return [sys.executable, str(upstream), str(job.checkpoint), "--outfile", str(out), "--outtype", job.outtype], env


def measure(cmd: list[str], env: dict[str, str], log: Path) -> Run:
    """Run `cmd` to completion; wall time, peak RSS and sampled peak anonymous memory.

    Peak RSS comes from os.wait4() on this child's pid: the kernel's ru_maxrss for exactly that
    process (and any children it reaped), the same high-water mark as /proc/PID/status VmHWM and
    `/usr/bin/time -v`, taken at exit so no spike is missed. getrusage(RUSAGE_CHILDREN) would not do:
    it is the maximum over *all* children so far, so after one big run every later run reads the same.
    RSS counts file pages mapped into the process (an mmap'd safetensors file), which the kernel can
    drop under pressure; the sampled RssAnon column shows the part that cannot be dropped.
    """
    peak_anon_kib = 0
    done = threading.Event()

    def poll(pid: int) -> None:
        nonlocal peak_anon_kib
        status = Path(f"/proc/{pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak_anon_kib = max(peak_anon_kib, int(line.split()[1]))
            except OSError:
                return
            time.sleep(POLL_SECONDS)

    with open(log, "wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        poller = threading.Thread(target=poll, args=(proc.pid,), daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, tell Popen
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return Run(wall, usage.ru_maxrss / 1024, peak_anon_kib / 1024, proc.returncode, lines[-1] if lines else "")


def gpt2_vocab_copy(checkpoint: Path, vocab_gguf: Path, dest: Path) -> Path:
    """`checkpoint` with GPT-2's tokenizer (from a vocab-only GGUF); every other file is a symlink."""
    from gguf import GGUFReader, Keys
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reader = GGUFReader(vocab_gguf)
    tokens = reader.fields[Keys.Tokenizer.LIST].contents()
    merges = [tuple(merge.split(" ", 1)) for merge in reader.fields[Keys.Tokenizer.MERGES].contents()]
    tokenizer = Tokenizer(models.BPE(vocab={text: i for i, text in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(GPT2_SPECIAL, special=True, normalized=False)])
    dest.mkdir()
    replaced = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"}
    for entry in checkpoint.iterdir():
        if entry.name not in replaced:
            (dest / entry.name).symlink_to(entry.resolve())
    tokenizer.save(str(dest / "tokenizer.json"))
    special_map = {f"{role}_token": GPT2_SPECIAL for role in ("bos", "eos", "unk", "pad")}
    (dest / "special_tokens_map.json").write_text(json.dumps(special_map))
    (dest / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **special_map}))
    config = json.loads((checkpoint / "config.json").read_text())
    special_id = tokens.index(GPT2_SPECIAL)
    config.update({f"{role}_token_id": special_id for role in ("pad", "bos", "eos", "cls", "sep")})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")))
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_kib / 2**20:.1f} GiB RAM, Python {platform.python_version()}, {platform.platform()}"


def report(results: list[Result]) -> str:
    """Markdown: per-job medians and per-run values, then ours/upstream ratios per checkpoint and type."""
    lines = [
        "| tool | checkpoint | outtype | ok runs | median wall s | median peak RSS MiB | median peak anon MiB (sampled) | wall s per run | peak RSS MiB per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        job, ok = result.job, result.ok
        per_wall = ", ".join(f"{run.wall_s:.2f}" for run in result.runs)
        per_rss = ", ".join(f"{run.peak_rss_mib:.0f}" for run in result.runs)
        if ok:
            medians = (f"{statistics.median(r.wall_s for r in ok):.2f} | {statistics.median(r.peak_rss_mib for r in ok):.0f} | "
                       f"{statistics.median(r.peak_anon_mib for r in ok):.0f}")
        else:
            failed = result.runs[-1]
            medians = f"failed (rc={failed.returncode}): `{failed.last_stderr_line}` | – | –"
        lines.append(f"| {job.tool} | {job.checkpoint_label} | {job.outtype} | {len(ok)}/{len(result.runs)} | {medians} | {per_wall} | {per_rss} |")
    lines += ["", "| checkpoint | outtype | wall ours/upstream | peak RSS ours/upstream |", "|---|---|---|---|"]
    by_key = {(r.job.tool, r.job.checkpoint_label, r.job.outtype): r.ok for r in results}
    for (tool, label, outtype), ours in by_key.items():
        theirs = by_key.get(("upstream", label, outtype))
        if tool == "ours" and theirs is not None:
            if ours and theirs:
                wall = statistics.median(r.wall_s for r in ours) / statistics.median(r.wall_s for r in theirs)
                rss = statistics.median(r.peak_rss_mib for r in ours) / statistics.median(r.peak_rss_mib for r in theirs)
                lines.append(f"| {label} | {outtype} | {wall:.2f} | {rss:.2f} |")
            else:
                lines.append(f"| {label} | {outtype} | n/a ({'ours' if not ours else 'upstream'} failed) | n/a |")
    return "\n".join(lines)


def bench_quant_set(checkpoint: Path, labels: list[str], runs: int, tmp: Path) -> str:
    """Markdown: wall time of the one-command set against the sum of one conversion per type."""

    def one_type(label: str, outdir: Path) -> list[str]:
        if label == "f16":
            return [OURS, "convert", str(checkpoint), "-o", str(outdir / "separate-f16.gguf"), "--outtype", "f16", "--no-progress"]
        return [OURS, "convert", str(checkpoint), "--outdir", str(outdir), "--quant", label, "--no-progress"]

    set_runs: list[Run] = []
    separate_runs: list[list[Run]] = []
    for round_index in range(1, runs + 1):
        for mode in ("set", "separate"):
            outdir = tmp / f"{mode}-{round_index}"
            outdir.mkdir()
            if mode == "set":
                cmd = [OURS, "convert", str(checkpoint), "--outdir", str(outdir), "--quant", ",".join(labels), "--no-progress"]
                set_runs.append(measure(cmd, dict(os.environ), tmp / "stderr.log"))
                runs_now = [set_runs[-1]]
            else:
                separate_runs.append([measure(one_type(label, outdir), dict(os.environ), tmp / "stderr.log") for label in labels])
                runs_now = separate_runs[-1]
            for run in runs_now:
                if run.returncode != 0:
                    raise SystemExit(f"{mode} run failed (rc={run.returncode}): {run.last_stderr_line}")
            written = sorted(path.name for path in outdir.iterdir())
            print(f"run {round_index}: {mode:8} wall={sum(r.wall_s for r in runs_now):7.2f}s "
                  f"peak_rss={max(r.peak_rss_mib for r in runs_now):6.0f} MiB files={len(written)}", flush=True)
            for path in outdir.iterdir():
                path.unlink()
    set_wall = statistics.median(r.wall_s for r in set_runs)
    separate_wall = statistics.median(sum(r.wall_s for r in round_runs) for round_runs in separate_runs)
    per_type = {label: statistics.median(round_runs[i].wall_s for round_runs in separate_runs) for i, label in enumerate(labels)}
    return "\n".join([
        "| checkpoint | types | set: one command, median wall s | separate: sum per round, median wall s | set / separate |",
        "|---|---|---|---|---|",
        f"| {checkpoint.name} | {','.join(labels)} | {set_wall:.1f} ({', '.join(f'{r.wall_s:.1f}' for r in set_runs)}) "
        f"| {separate_wall:.1f} ({', '.join(f'{sum(r.wall_s for r in rr):.1f}' for rr in separate_runs)}) | {set_wall / separate_wall:.2f} |",
        "",
        "Separate conversions, median wall s per type: " + ", ".join(f"{label} {wall:.1f}" for label, wall in per_type.items()),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--outtype", action="append", help="output type; repeat for several (default f16)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and output type (default 3)")
    parser.add_argument("--upstream", type=Path, help="llama.cpp's convert_hf_to_gguf.py (its gguf-py/ must sit beside it)")
    parser.add_argument("--gpt2-vocab", type=Path, help="ggml-vocab-gpt-2.gguf: also measure both tools on a GPT-2-tokenizer copy")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where the temporary outputs go")
    parser.add_argument("--quant-set", help="comma-separated types: measure the one-command set against one conversion per type")
    args = parser.parse_args(argv)
    if args.quant_set:
        print(f"machine: {machine()}", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-convert-", dir=args.workdir) as tmp_name:
            table = bench_quant_set(args.checkpoint, args.quant_set.split(","), args.runs, Path(tmp_name))
        print()
        print(table)
        return 0
    if args.gpt2_vocab and not args.upstream:
        parser.error("--gpt2-vocab needs --upstream")
    tools = ["ours", "upstream"] if args.upstream else ["ours"]
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-convert-", dir=args.workdir) as tmp_name:
        tmp = Path(tmp_name)
        checkpoints = [(args.checkpoint, "original")]
        if args.gpt2_vocab:
            checkpoints.append((gpt2_vocab_copy(args.checkpoint, args.gpt2_vocab, tmp / "gpt2-vocab-copy"), "gpt2-vocab copy"))
        results = [Result(Job(tool, path, label, outtype)) for outtype in args.outtype or ["f16"] for path, label in checkpoints for tool in tools]
        for round_index in range(1, args.runs + 1):
            for result in results:
                out = tmp / "out.gguf"
                cmd, env = command(result.job, out, args.upstream)
                run = measure(cmd, env, tmp / "stderr.log")
                out.unlink(missing_ok=True)
                result.runs.append(run)
                job = result.job
                print(f"run {round_index}: {job.tool:8} {job.checkpoint_label:16} {job.outtype:5} rc={run.returncode} wall={run.wall_s:6.2f}s "
                      f"peak_rss={run.peak_rss_mib:6.0f} MiB peak_anon~{run.peak_anon_mib:6.0f} MiB"
                      + ("" if run.returncode == 0 else f"  {run.last_stderr_line}"), flush=True)
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
