"""`granite-gguf serve` on loopback, driven by the real `openai` and `ollama` client packages and raw HTTP."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from tests.conftest import Workspace, cli_command

pytestmark = [pytest.mark.slow]

DIMS = (48, 32, 16)
COSINE = 0.99999  # f32 file; the server packs inputs differently from a one-by-one reference


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    embedder: Embedder  # the same file in this process, for expected vectors and token counts

    def expected(self, texts: list[str], dim: int | None = None) -> np.ndarray:
        return self.embedder.encode(texts, truncate_dim=dim, batch_size=1)


@pytest.fixture(scope="module")
def server(workspace: Workspace) -> Iterator[RunningServer]:
    gguf = convert(open_checkpoint(str(workspace.checkpoint("tiny-gemma3"))), workspace.root / "served.gguf",
                   OutType.F32, matryoshka_dims=DIMS)
    process = subprocess.Popen(
        cli_command("serve", str(gguf), "--port", "0", "--max-tokens", "512"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        match = re.search(r"http://[\d.]+:\d+", first_line)
        assert match, f"server did not start: {first_line}{process.stdout.read() if process.poll() is not None else ''}"
        with Embedder(gguf, max_tokens=512) as embedder:
            yield RunningServer(match.group(0), process, embedder)
    finally:
        process.terminate()
        process.wait(timeout=30)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


TEXTS = ["The cat sits on the mat.", "Die Katze sitzt auf der Matte.", "猫がマットの上に座っている。", ""]


def test_openai_client_float_base64_and_dimensions(server: RunningServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    # Left out, encoding_format makes the client ask for base64 and decode it itself; asked for
    # explicitly, base64 reaches the caller as the string (little-endian float32 bytes).
    for encoding in (None, "float", "base64"):
        for dim in (None, *DIMS):
            kwargs = {key: value for key, value in (("dimensions", dim), ("encoding_format", encoding)) if value}
            response = client.embeddings.create(model="granite", input=TEXTS, **kwargs)
            rows = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
            if encoding == "base64":
                rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]
            vectors = np.array(rows)
            assert vectors.shape == (len(TEXTS), dim or 64)
            assert np.min(cosines(vectors, server.expected(TEXTS, dim))) >= COSINE
    assert response.usage.prompt_tokens == sum(len(server.embedder.tokenize(t)) for t in TEXTS)
    single = client.embeddings.create(model="granite", input="one string")
    assert len(single.data) == 1 and single.model == "served"


def test_ollama_client_embed_and_legacy_embeddings(server: RunningServer) -> None:
    import ollama

    client = ollama.Client(host=server.url)
    response = client.embed(model="granite", input=TEXTS)
    assert np.min(cosines(np.array(response.embeddings), server.expected(TEXTS))) >= COSINE
    assert response.prompt_eval_count == sum(len(server.embedder.tokenize(t)) for t in TEXTS)
    short = client.embed(model="granite", input="Matryoshka", dimensions=16)
    assert np.min(cosines(np.array(short.embeddings), server.expected(["Matryoshka"], 16))) >= COSINE
    legacy = client.embeddings(model="granite", prompt="Matryoshka")
    assert np.min(cosines(np.array([legacy.embedding]), server.expected(["Matryoshka"]))) >= COSINE
    with pytest.raises(ollama.ResponseError, match="longer than max_tokens"):
        client.embed(model="granite", input="word " * 2000, truncate=False)
    assert len(client.embed(model="granite", input="word " * 2000).embeddings[0]) == 64


BAD_REQUESTS = [
    ("/v1/embeddings", {"model": "m"}, 400, "input"),
    ("/v1/embeddings", {"input": 42}, 400, "input"),
    ("/v1/embeddings", {"input": []}, 400, "input"),
    ("/v1/embeddings", {"input": ["ok", None]}, 400, "input"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "token-id"),
    ("/v1/embeddings", {"input": "x", "dimensions": -1}, 400, "dimensions"),
    ("/v1/embeddings", {"input": "x", "dimensions": 4096}, 400, "valid: 64, 48, 32, 16"),
    ("/v1/embeddings", {"input": "x", "dimensions": 20}, 400, "valid: 64, 48, 32, 16"),
    ("/v1/embeddings", {"input": "x", "dimensions": "32"}, 400, "dimensions"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": ["x"] * 257}, 400, "at most 256"),
    ("/api/embed", {"input": "x", "truncate": "yes"}, 400, "truncate"),
    ("/api/embeddings", {"prompt": ["x"]}, 400, "prompt"),
    ("/v2/embeddings", {"input": "x"}, 404, "no route"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_request_gets_4xx_with_a_message(server: RunningServer, path: str, body: dict, status: int,
                                             message: str) -> None:
    response = requests.post(server.url + path, json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in (error if isinstance(error, str) else error["message"])


def test_malformed_bodies_and_the_server_keeps_answering(server: RunningServer) -> None:
    url = server.url + "/v1/embeddings"
    assert requests.post(url, data=b'{"input": "\xff\xfe"}', timeout=30).status_code == 400  # invalid UTF-8
    assert requests.post(url, data=b"{not json", timeout=30).status_code == 400
    assert requests.post(url, data=b'["a list"]', timeout=30).status_code == 400
    huge = requests.post(url, data=b"x" * (5 * 1024 * 1024), timeout=60)
    assert huge.status_code == 413 and "at most" in huge.json()["error"]["message"]
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 411")
    assert requests.get(server.url + "/health", timeout=30).json() == {"status": "ok"}
    ok = requests.post(url, json={"input": "still here"}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 64
    assert server.process.poll() is None


def test_200_concurrent_requests_with_mixed_lengths(server: RunningServer) -> None:
    rng = np.random.default_rng(7)
    words = "alpha beta gamma delta épsilon ζήτα 七 八 nine ten".split()
    requests_texts = [[" ".join(rng.choice(words, size=int(rng.integers(1, 400)))) + f" #{i}.{j}"
                       for j in range(int(rng.integers(1, 4)))] for i in range(200)]
    flat = [text for texts in requests_texts for text in texts]
    expected = dict(zip(flat, server.expected(flat)))

    def call(texts: list[str]) -> tuple[list[str], np.ndarray]:
        path, key = ("/api/embed", "embeddings") if len(texts) % 2 else ("/v1/embeddings", "data")
        response = requests.post(server.url + path, json={"model": "m", "input": texts}, timeout=300)
        response.raise_for_status()
        rows = response.json()[key]
        return texts, np.array([row["embedding"] if isinstance(row, dict) else row for row in rows])

    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(call, requests_texts))
    assert len(answers) == 200
    for texts, vectors in answers:
        assert len(vectors) == len(texts)
        for text, vector in zip(texts, vectors):
            assert float(np.dot(vector, expected[text])) >= COSINE, text[:40]
    assert server.process.poll() is None


def test_serve_refuses_a_busy_port(server: RunningServer, workspace: Workspace) -> None:
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run(cli_command("serve", str(workspace.gguf("tiny-gemma3")), "--port", port),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: cannot listen"), result.stderr


def test_embed_command_prints_json_lines(server: RunningServer) -> None:
    result = subprocess.run(cli_command("embed", str(server.embedder.path), "first text", "second text", "--dim", "16"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = np.array([json.loads(line) for line in result.stdout.splitlines()])
    assert rows.shape == (2, 16)
    assert np.min(cosines(rows, server.expected(["first text", "second text"], 16))) >= COSINE
    bad = subprocess.run(cli_command("embed", str(server.embedder.path), "x", "--dim", "20"),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "valid: 64, 48, 32, 16" in bad.stderr


def test_model_listing(server: RunningServer) -> None:
    assert requests.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"] == "served"
    assert requests.get(server.url + "/api/tags", timeout=30).json()["models"][0]["name"] == "served"
    assert Path(server.embedder.path).stat().st_size == requests.get(server.url + "/api/tags", timeout=30).json()[
        "models"][0]["size"]
