"""A real llama.cpp `llama-server` (built from the same llama.cpp as the bindings by
scripts/build-llama-server.sh) serves the converted files: same tokens, same vectors as the Embedder.

What the server returns, for a pooled (CLS/MEAN) model, llama.cpp 0.3.36:
- POST /v1/embeddings {"input": [...]} → {"data": [{"index", "embedding": [floats]}], "usage":
  {"prompt_tokens", "total_tokens"}}: one flat vector per input, already L2-normalized (the server's
  default `embd_normalize` is 2); prompt_tokens is the sum over all inputs, BOS/EOS included.
- POST /embedding {"content": text} → [{"index": 0, "embedding": [[floats]]}]: a list of results whose
  "embedding" is a list of vectors (one, for a pooled model), also L2-normalized.
The vectors are normalized again here anyway, so the comparison does not depend on that default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from tokenizers import Tokenizer

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.probes import CODE, EMOJI, LONG_WORDS, long_text
from tests.conftest import FAMILIES, free_port

pytestmark = [pytest.mark.slow, pytest.mark.llama_server]

MIN_COSINE_F32 = 0.99999
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0

SHORT_TEXTS = [
    "The cat sits on the mat.",
    "Die Katze sitzt auf der Matte.",
    "Mixed: English, Deutsch, русский, 中文, العربية, हिन्दी, 한국어, ελληνικά, עברית, ไทย.",
    " leading space",
    "para one\n\npara two",
    CODE[0],
    EMOJI[1],
    LONG_WORDS[1],
]


def server_binary() -> Path:
    override = os.environ.get("GRANITE_GGUF_LLAMA_SERVER")
    if override:
        return Path(override)
    return Path(sys.prefix) / "bin" / "llama-server"  # linked there by scripts/build-llama-server.sh


@dataclass
class Server:
    url: str
    log: Path
    embedder: Embedder
    texts: list[str]
    checkpoint: Path

    def log_text(self) -> str:
        return f"server log {self.log}:\n{self.log.read_text(errors='replace')[-6000:]}"

    def post(self, route: str, body: dict[str, Any]) -> Any:
        response = requests.post(self.url + route, json=body, timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 200, f"{route}: HTTP {response.status_code} {response.text[:500]}\n{self.log_text()}"
        return response.json()


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.fixture(scope="module", params=FAMILIES)
def server(request: pytest.FixtureRequest, workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = server_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"{binary}: no llama-server binary; run `bash scripts/build-llama-server.sh` "
                    "(or set GRANITE_GGUF_LLAMA_SERVER)")
    family = request.param
    gguf = workspace.gguf(family, "f32")
    embedder = Embedder(gguf)
    # Inputs up to the Embedder's own limit (the file's context, at most 8,192), and the
    # server sized the same way: a non-causal model must get each input in one micro-batch.
    n = embedder.max_tokens
    texts = SHORT_TEXTS + [long_text(0, 2_500), long_text(5_000, 6_000)]
    texts = [t for t in texts if len(embedder.tokenize(t)) <= n]
    assert max(len(embedder.tokenize(t)) for t in texts) >= 1_000, "no long input within the limit"
    port = free_port()
    log = tmp_path_factory.mktemp(f"llama-server-{family}") / "server.log"
    # Flash attention on, as the bindings run it (Embedder(flash_attn=True) → LLAMA_FLASH_ATTN_TYPE_ENABLED;
    # the server's default is "auto"). One slot, so the whole context is one sequence's.
    command = [str(binary), "-m", str(gguf), "--embedding", "--host", "127.0.0.1", "--port", str(port),
               "-c", str(n), "-b", str(n), "-ub", str(n), "-np", "1", "-t", "2", "-fa", "on", "--no-webui"]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama-server exited with {process.returncode}: {' '.join(command)}\n"
                            f"server log {log}:\n{log.read_text(errors='replace')[-6000:]}")
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server not ready after {START_TIMEOUT_S:.0f} s: {' '.join(command)}\n"
                            f"server log {log}:\n{log.read_text(errors='replace')[-6000:]}")
            time.sleep(0.1)
        yield Server(url, log, embedder, texts, workspace.checkpoint(family))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        embedder.close()


def assert_close(server: Server, got: np.ndarray, endpoint: str) -> None:
    expected = server.embedder.encode(server.texts)  # float32, L2-normalized
    cosines = np.sum(unit(got) * unit(expected), axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= MIN_COSINE_F32, (
        f"{endpoint}: cosine {cosines[worst]:.7f} < {MIN_COSINE_F32} for input {worst} "
        f"({len(server.embedder.tokenize(server.texts[worst]))} tokens)")


def test_v1_embeddings_match_the_bindings(server: Server) -> None:
    body = server.post("/v1/embeddings", {"input": server.texts, "model": "x"})
    data = sorted(body["data"], key=lambda item: item["index"])
    assert [item["index"] for item in data] == list(range(len(server.texts)))
    got = np.array([item["embedding"] for item in data], dtype=np.float64)
    assert got.shape == (len(server.texts), server.embedder.dimension)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the server normalizes
    assert_close(server, got, "/v1/embeddings")
    n_tokens = sum(len(server.embedder.tokenize(t)) for t in server.texts)
    assert body["usage"]["prompt_tokens"] == n_tokens


def test_v1_embeddings_token_count_per_input(server: Server) -> None:
    for text in server.texts:
        body = server.post("/v1/embeddings", {"input": text, "model": "x"})
        assert body["usage"]["prompt_tokens"] == len(server.embedder.tokenize(text)), repr(text[:60])


def test_tokenize_endpoint_gives_the_same_ids(server: Server) -> None:
    for text in server.texts:
        body = server.post("/tokenize", {"content": text, "add_special": True})
        assert body["tokens"] == server.embedder.tokenize(text), repr(text[:60])


def test_embedding_endpoint_matches_the_bindings(server: Server) -> None:
    rows = []
    for text in server.texts:
        body = server.post("/embedding", {"content": text})
        assert isinstance(body, list) and len(body) == 1, str(body)[:200]
        vectors = body[0]["embedding"]  # a list of vectors: one for a pooled model
        assert len(vectors) == 1 and len(vectors[0]) == server.embedder.dimension
        rows.append(vectors[0])
    got = np.array(rows, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert_close(server, got, "/embedding")


def special_token_text(checkpoint: Path) -> str:
    """A text that spells out two of the checkpoint's special tokens, e.g. 'a <eos> b <bos>'."""
    added = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    special = [token["content"] for token in added if token["special"]]
    return f"a {special[1]} b {special[2]}"


def test_special_token_strings_are_parsed_like_hf(server: Server) -> None:
    # The server tokenizes /v1/embeddings input with parse_special=true, as HF `tokenizers` does:
    # "<eos>" written in the text becomes the <eos> token.
    text = special_token_text(server.checkpoint)
    hf_ids = Tokenizer.from_file(str(server.checkpoint / "tokenizer.json")).encode(text).ids
    assert server.post("/tokenize", {"content": text, "add_special": True})["tokens"] == hf_ids
    body = server.post("/v1/embeddings", {"input": [text], "model": "x"})
    assert body["usage"]["prompt_tokens"] == len(hf_ids)


def test_embedder_parses_special_token_strings_like_the_server(server: Server) -> None:
    text = special_token_text(server.checkpoint)
    ids = server.post("/tokenize", {"content": text, "add_special": True})["tokens"]
    assert server.embedder.tokenize(text) == ids
