"""Where llama.cpp spends embedding time on this CPU: a `perf` profile of llama-server embedding documents.

The pip-built bindings are stripped; llama-server (scripts/build-llama-server.sh) is the same
llama.cpp with the same CPU flags and keeps its symbols, so perf can name ggml's kernels. The server
gets one document per request, as the Embedder decodes a 512-token document; perf samples only
while requests run. Prints the top functions and the share per kernel family.

    .venv/bin/python scripts/profile_embed.py /tmp/granite-gguf-bench/full97m-q8_0.gguf /tmp/full97m --tokens 512
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from granite_gguf.throughput import make_documents

FAMILIES = [  # (family, pattern on "symbol  (dso)"), first match wins
    ("flash attention", re.compile(r"flash_attn")),
    ("matrix products", re.compile(r"mul_mat|sgemm|tinyBLAS|gemm|gemv|vec_dot|tiled")),
    ("activation quantization", re.compile(r"quantize_row|from_float")),
    ("softmax / norms / GLU / RoPE / copies", re.compile(r"soft_max|norm|glu|gelu|silu|rope|cpy|dup|add|mul|scale|get_rows|cont")),
    ("OpenMP (libgomp: thread hand-off and spin-waiting)", re.compile(r"\(libgomp")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("checkpoint", type=Path, help="its checkpoint folder (for the tokenizer that cuts documents)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--docs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server", type=Path, default=Path(sys.prefix) / "bin" / "llama-server")
    args = parser.parse_args()
    docs = make_documents(args.checkpoint, args.tokens, args.docs)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    size = max(args.tokens + 64, 512)
    server = subprocess.Popen([str(args.server), "-m", str(args.gguf), "--embedding", "--host", "127.0.0.1", "--port",
                               str(port), "-c", str(size), "-b", str(size), "-ub", str(size), "-np", "1", "-fa", "on",
                               "-t", str(args.threads), "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        requests.post(url + "/v1/embeddings", json={"input": docs[:1]}, timeout=600)  # warm-up
        perf = subprocess.Popen(["perf", "record", "-F", "999", "-p", str(server.pid), "-o", "/tmp/profile_embed.data"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        started = time.perf_counter()
        for doc in docs:
            requests.post(url + "/v1/embeddings", json={"input": [doc]}, timeout=600).raise_for_status()
        seconds = time.perf_counter() - started
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = subprocess.run(["perf", "report", "-i", "/tmp/profile_embed.data", "--no-children", "--sort", "dso,symbol",
                             "-g", "none", "--percent-limit", "0.2", "--stdio"], capture_output=True, text=True).stdout
    rows = [(float(m.group(1)), f"{m.group(3).strip()}  ({m.group(2)})")
            for m in re.finditer(r"^\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(.+)$", report, re.M)]
    print(f"{len(docs)} documents of {args.tokens} tokens in {seconds:.2f} s = {len(docs) / seconds:.2f} docs/s "
          f"({args.threads} threads)\n\ntop functions (% of samples):")
    for share, symbol in rows[:15]:
        print(f"  {share:5.1f}%  {symbol[:110]}")
    shares: dict[str, float] = {}
    for share, symbol in rows:
        family = next((name for name, pattern in FAMILIES if pattern.search(symbol)), "other")
        shares[family] = shares.get(family, 0.0) + share
    print("\nby kernel family (functions ≥ 0.2% of samples):")
    for family, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {share:5.1f}%  {family}")


if __name__ == "__main__":
    main()
