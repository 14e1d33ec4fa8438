"""Load benchmark: closed-loop HTTP clients on loopback against embedding servers on the same GGUF.

Servers, each started here in its own process, one after another on the same machine and file:
  ours          `granite-gguf serve` (dynamic batching, its default workers); `ours:N` with `--workers N`
  ours-lib      `granite-gguf serve` on the libllama in `--llama-lib DIR` (another llama.cpp build, e.g. the
                AMX opt-in of scripts/install.sh: LLAMA_CPP_LIB_PATH)
  ours-serial   `granite-gguf serve --workers 1 --batch-inputs 1`: each request alone on one context,
                the behaviour of the lock-serialized server this one replaced
  old           with `--old-commit REV`: `granite-gguf serve` of that commit (the hand-written
                http.server one), run from a `git archive` of it
  llama-server  llama.cpp's own server (scripts/build-llama-server.sh) with `--parallel` slots
  infinity      infinity-emb (PyPI, torch backend, fp32 on the CPU) on the checkpoint the GGUF came from
                (`--checkpoint`), from its own virtual environment (`--infinity`: it pins transformers 4,
                sentence-transformers 3 and numpy 1, which this project's environment does not take). Its
                sentence-transformers 3 hands ModernBERT the tokenizer's token_type_ids (TypeError, and the
                request never answers) unless tokenizer_config.json lists model_input_names
                ["input_ids", "attention_mask"]; the full-size builder's does not
Scenarios: `short` (64 clients, queries of 5-30 tokens) and `passages` (8 clients, 512-token passages).
Each client sends one text per request to /v1/embeddings and sends the next as soon as the answer is
in; every answer is checked against the Embedder's vector for that text. Servers take turns round by
round; requests/s (answers arriving in the window) and latency percentiles (every request sent in it, see
`load`) are medians over rounds. Beside them, the CPU time per answer
of the server's process and of the load generator (aiohttp, which shares the CPUs: see `load`).

    .venv/bin/python scripts/bench_server.py /tmp/granite-gguf-bench/full97m-f16.gguf --old-commit d259862
    python3 -m venv ~/.cache/granite-gguf/infinity-venv   # once: infinity-emb beside its own torch
    ~/.cache/granite-gguf/infinity-venv/bin/pip install torch==2.13.0 "infinity-emb[torch,server]==0.0.78"
    .venv/bin/python scripts/bench_server.py full97m-f16.gguf --servers ours llama-server infinity \
        --checkpoint /tmp/full97m
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MIN_COSINE = 0.999  # an f16 file packed differently by each server


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    tokens: tuple[int, int]  # token count range of the texts (special tokens included)
    pool: int  # distinct texts


SCENARIOS = {"short": Scenario("short", 64, (5, 30), 1024), "passages": Scenario("passages", 8, (512, 512), 64)}


@dataclass
class Result:
    server: str
    scenario: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    wrong: int
    min_cosine: float
    server_cpu_ms: float  # CPU time of the server's process per answer (all its threads)
    client_cpu_ms: float  # CPU time of the load generator per answer (it shares the CPUs)


def texts_of(embedder: object, scenario: Scenario, seed: int = 0) -> list[str]:
    """Windows of the probe set cut to a token count drawn from the scenario's range."""
    from granite_gguf.probes import probe_texts

    corpus = " ".join(text.replace("\n", " ") for text in probe_texts())
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < scenario.pool:
        wanted = rng.randint(*scenario.tokens)
        start = rng.randrange(len(corpus) - 20000)
        low, high = 1, 20000  # characters: the longest window with at most `wanted` tokens
        while low < high:
            middle = (low + high + 1) // 2
            if len(embedder.tokenize(corpus[start:start + middle])) <= wanted:  # type: ignore[attr-defined]
                low = middle
            else:
                high = middle - 1
        text = corpus[start:start + low]
        if len(embedder.tokenize(text)) >= max(scenario.tokens[0], wanted - 8):  # type: ignore[attr-defined]
            texts.append(text)
    return texts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def old_tree(commit: str, dest: Path) -> Path:
    """An importable `granite_gguf` of `commit`: its package folders put together as pyproject maps them."""
    archive = dest / "old.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), commit], check=True)
    source = dest / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    mapping = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = dest / "pkg"
    for package, folder in sorted(mapping.items()):  # parents before children
        shutil.copytree(source / folder, root / package.replace(".", "/"), dirs_exist_ok=True)
    return root


def server_command(kind: str, gguf: Path, port: int, threads: int, parallel: int, llama_server: Path,
                   infinity: Path | None = None, checkpoint: Path | None = None) -> list[str]:
    serve = [sys.executable, "-m", "granite_gguf.cli", "serve", str(gguf), "--port", str(port), "--max-tokens", "512",
             "--threads", str(threads), "--model-name", "m"]  # the name every request asks for
    if kind.startswith("ours:"):
        return [*serve, "--workers", kind.removeprefix("ours:")]
    if kind in ("ours", "ours-lib"):
        return serve
    if kind == "ours-serial":
        return [*serve, "--workers", "1", "--batch-inputs", "1"]
    if kind == "old":
        return serve
    if kind == "llama-server":  # 512 tokens per slot; batches of at most 1,024 tokens, as the Embedder packs
        return [str(llama_server), "-m", str(gguf), "--embedding", "--host", "127.0.0.1", "--port", str(port),
                "-c", str(512 * parallel), "-b", "1024", "-ub", "1024", "-np", str(parallel), "-t", str(threads),
                "-fa", "on", "--threads-http", str(max(64, parallel) + 8)]
    if kind == "infinity":  # its own batching (up to --batch-size inputs per forward pass), on the checkpoint
        if infinity is None or checkpoint is None:
            raise SystemExit("infinity needs --infinity (its environment's infinity_emb) and --checkpoint")
        return [str(infinity), "v2", "--model-id", str(checkpoint), "--served-model-name", "m", "--engine", "torch",
                "--device", "cpu", "--dtype", "float32", "--batch-size", "64", "--port", str(port),
                "--host", "127.0.0.1", "--url-prefix", "/v1", "--no-model-warmup"]
    raise ValueError(kind)


def imported_from(env: dict[str, str], cwd: Path, tree: str) -> None:
    """Stop unless `granite_gguf.bindings` imports from `tree` as a server started with `env` in `cwd` would."""
    probe = [sys.executable, "-c", "import granite_gguf.bindings.server as s; print(s.__file__)"]
    where = subprocess.run(probe, env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(tree):
        raise SystemExit(f"the old server would import {where}, not the tree of --old-commit in {tree}")


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    url: str


def start(command: list[str], url: str, env: dict[str, str], log: Path) -> Running:
    """Started in the log's folder: `python -m` puts the working directory first on sys.path, so from the repository
    root every `granite_gguf` server, the `old` one too, would import this checkout instead of its PYTHONPATH tree."""
    import requests

    with log.open("ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return Running(process, url)
        except requests.RequestException:  # not listening yet, or too busy starting to answer within 2 s
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command} did not start")


async def load(url: str, scenario: Scenario, texts: list[str], expected: np.ndarray, warmup_s: float,
               measure_s: float) -> tuple[int, list[float], int, int, float]:
    """Closed loop: `scenario.clients` clients each send, wait, check, repeat, until the window ends.

    The rate counts the answers that arrive in the window. The latencies are those of every request sent in the
    window, the ones still in flight when it ends included (the clients wait for them): counting only answers
    that arrive in the window leaves out a request a server starves past its end, and counting only requests
    both sent and answered in it leaves out the slowest ones near the end too.

    aiohttp, not httpx: the load generator shares the CPUs with the server, and httpx's client took about 7 ms
    of CPU per request here (more than the server's own HTTP work), so the clients, not the servers, set the
    tail: with 64 httpx clients a request waited up to 5 s in the client before its bytes reached the server."""
    import aiohttp

    begin = time.perf_counter() + warmup_s
    end = begin + measure_s
    latencies: list[float] = []
    counts = {"answers": 0, "errors": 0, "wrong": 0}
    worst = [1.0]
    bodies = [json.dumps({"input": text, "model": "m"}).encode() for text in texts]
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=scenario.clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one_client(offset: int) -> None:
            i = offset
            while (started := time.perf_counter()) < end:
                index = i % len(texts)
                i += scenario.clients
                try:
                    async with session.post("/v1/embeddings", data=bodies[index], headers=headers) as response:
                        ok = response.status == 200
                        raw = await response.read()
                except (aiohttp.ClientError, TimeoutError):  # a refused connection, or no answer within 300 s
                    ok = False
                finished = time.perf_counter()
                answered_in_window, sent_in_window = begin <= finished <= end, started >= begin
                if not (answered_in_window or sent_in_window):
                    continue  # warm-up
                if not ok:
                    counts["errors"] += 1
                    continue
                vector = np.asarray(json.loads(raw)["data"][0]["embedding"], dtype=np.float32)
                cosine = float(vector @ expected[index] / max(np.linalg.norm(vector), 1e-12))
                worst[0] = min(worst[0], cosine)
                counts["wrong"] += cosine < MIN_COSINE
                counts["answers"] += answered_in_window
                if sent_in_window:
                    latencies.append(finished - started)

        await asyncio.gather(*(one_client(c) for c in range(scenario.clients)))
    return counts["answers"], latencies, counts["errors"], counts["wrong"], worst[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    from granite_gguf.bindings.embedder import Embedder, usable_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--servers", nargs="+", default=["ours", "ours:1", "ours-serial", "old", "llama-server"])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--old-commit", help="a commit whose `serve` is the `old` server (without it, no `old`)")
    parser.add_argument("--parallel", type=int, default=64, help="llama-server --parallel slots")
    parser.add_argument("--threads", type=int, default=usable_threads())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per scenario and round")
    parser.add_argument("--llama-server", type=Path, default=Path(sys.prefix) / "bin" / "llama-server")
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    parser.add_argument("--infinity", type=Path, default=Path.home() / ".cache/granite-gguf/infinity-venv/bin/infinity_emb",
                        help="infinity-emb's command, in its own environment")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint the GGUF was converted from (for infinity)")
    parser.add_argument("--llama-lib", type=Path, help="the libllama folder of the `ours-lib` server (LLAMA_CPP_LIB_PATH)")
    args = parser.parse_args(argv)
    servers = [s for s in args.servers if s != "old" or args.old_commit]
    if "ours-lib" in servers and not args.llama_lib:
        parser.error("ours-lib needs --llama-lib DIR")

    with Embedder(args.gguf, max_tokens=512) as embedder:
        pools = {name: texts_of(embedder, SCENARIOS[name]) for name in args.scenarios}
        expected = {name: embedder.encode(texts, batch_size=1) for name, texts in pools.items()}
        lengths = {name: [len(embedder.tokenize(t)) for t in texts] for name, texts in pools.items()}
    for name in args.scenarios:
        print(f"{name}: {SCENARIOS[name].clients} clients, {len(pools[name])} texts of "
              f"{min(lengths[name])}-{max(lengths[name])} tokens", flush=True)

    results: dict[tuple[str, str], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        env = dict(os.environ)
        old_env = dict(env, PYTHONPATH=str(old_tree(args.old_commit, Path(tmp)))) if args.old_commit else env
        log = Path(tmp) / "servers.log"
        if args.old_commit:
            imported_from(old_env, log.parent, old_env["PYTHONPATH"])
        for round_index in range(args.rounds):
            order = servers[round_index % len(servers):] + servers[:round_index % len(servers)]
            for kind in order:
                port = free_port()
                command = server_command(kind, args.gguf, port, args.threads, args.parallel, args.llama_server,
                                         args.infinity, args.checkpoint)
                threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                           "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}  # infinity: no telemetry
                server_env = old_env if kind == "old" else dict(env, **threads)
                if kind == "ours-lib":
                    server_env["LLAMA_CPP_LIB_PATH"] = str(args.llama_lib)
                running = start(command, f"http://127.0.0.1:{port}", server_env, log)
                try:
                    for name in args.scenarios:
                        server_cpu, client_cpu = cpu_seconds(running.process.pid), client_cpu_seconds()
                        answers, latencies, errors, wrong, worst = asyncio.run(
                            load(running.url, SCENARIOS[name], pools[name], expected[name], args.warmup,
                                 args.seconds))
                        per = max(answers, 1)  # CPU over warm-up, window and drain, per answer of the window: a ratio
                        result = Result(kind, name, answers / args.seconds, percentile(latencies, 50),
                                        percentile(latencies, 99), errors, wrong, worst,
                                        1000 * (cpu_seconds(running.process.pid) - server_cpu) / per,
                                        1000 * (client_cpu_seconds() - client_cpu) / per)
                        results.setdefault((kind, name), []).append(result)
                        print(f"round {round_index + 1} {kind:12s} {name:8s} {result.requests_per_s:7.1f} req/s  "
                              f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  errors {errors}  "
                              f"wrong {wrong}  min cosine {worst:.6f}  CPU ms/answer server {result.server_cpu_ms:.1f} "
                              f"client {result.client_cpu_ms:.1f}", flush=True)
                finally:
                    running.process.terminate()
                    running.process.wait(timeout=60)

    lines = [f"file `{args.gguf.name}`, {args.threads} threads per server, {args.rounds} rounds of {args.seconds:g} s "
             f"(after {args.warmup:g} s warm-up); llama-server --parallel {args.parallel}", "",
             "| scenario | server | req/s (median) | per round | p50 ms | p99 ms | errors | wrong | min cosine | "
             "server CPU ms/answer | client CPU ms/answer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.scenarios:
        for kind in servers:
            runs = results[(kind, name)]
            rates = [r.requests_per_s for r in runs]
            lines.append(f"| {name} | {kind} | {statistics.median(rates):.1f} | "
                         f"{', '.join(f'{r:.1f}' for r in rates)} | {statistics.median(r.p50_ms for r in runs):.1f} | "
                         f"{statistics.median(r.p99_ms for r in runs):.1f} | {sum(r.errors for r in runs)} | "
                         f"{sum(r.wrong for r in runs)} | {min(r.min_cosine for r in runs):.6f} | "
                         f"{statistics.median(r.server_cpu_ms for r in runs):.1f} | "
                         f"{statistics.median(r.client_cpu_ms for r in runs):.1f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.markdown:
        with args.markdown.open("a") as out:
            out.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
