"""`granite-gguf serve` on loopback, driven by the real `openai` and `ollama` client packages and raw HTTP."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pydantic import SecretStr

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from tests.conftest import Workspace, cli_command

pytestmark = [pytest.mark.slow]

DIMS = (48, 32, 16)
COSINE = 0.99999  # f32 file; the server packs inputs differently from a one-by-one reference
START_TIMEOUT_S = 120.0


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    embedder: Embedder  # the same file in this process, for expected vectors and token counts
    log: Path  # the server's stdout and stderr

    def expected(self, texts: list[str], dim: int | None = None) -> np.ndarray:
        return self.embedder.encode(texts, truncate_dim=dim, batch_size=1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(gguf: Path, log: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`granite-gguf serve GGUF --port 0 …` with its output in `log`; yields its URL once it listens."""
    with log.open("wb") as sink:
        process = subprocess.Popen(cli_command("serve", str(gguf), "--port", "0", "--max-tokens", "512", *options),
                                   stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (match := re.search(r"serving .* on (http://[\d.]+:\d+)", log.read_text(errors="replace"))):
            assert process.poll() is None and time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.05)
        yield match.group(1), process
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def served_gguf(workspace: Workspace) -> Path:
    path = workspace.root / "served.gguf"
    if not path.exists():
        convert(open_checkpoint(str(workspace.checkpoint("tiny-gemma3"))), path, OutType.F32, matryoshka_dims=DIMS)
    return path


@pytest.fixture(scope="module")
def server(served_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with running_server(served_gguf, log, "--workers", "2") as (url, process), \
            Embedder(served_gguf, max_tokens=512) as embedder:
        yield RunningServer(url, process, embedder, log)


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
            kwargs: dict[str, Any] = {key: value for key, value in (("dimensions", dim), ("encoding_format", encoding))
                                      if value}
            response = client.embeddings.create(model="granite", input=TEXTS, **kwargs)
            rows: list[Any] = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
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


def test_framework_clients_langchain_and_llamaindex(server: RunningServer) -> None:
    """The clients RAG pipelines use on top of such servers, with their default settings where possible."""
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    texts = TEXTS[:3]
    expected = server.expected(texts)
    # check_embedding_ctx_length=False: otherwise LangChain tokenizes with tiktoken, which downloads its tables
    langchain_openai = OpenAIEmbeddings(model="granite", base_url=server.url + "/v1", api_key=SecretStr("unused"),
                                        check_embedding_ctx_length=False)
    langchain_ollama = OllamaEmbeddings(model="granite", base_url=server.url)
    llama_index = OpenAILikeEmbedding(model_name="granite", api_base=server.url + "/v1", api_key="unused")
    answers = {
        "langchain-openai": (langchain_openai.embed_documents(texts), langchain_openai.embed_query(texts[0])),
        "langchain-ollama": (langchain_ollama.embed_documents(texts), langchain_ollama.embed_query(texts[0])),
        "llama-index": (llama_index.get_text_embedding_batch(texts), llama_index.get_query_embedding(texts[0])),
    }
    for name, (documents, query) in answers.items():
        assert np.min(cosines(np.array(documents), expected)) >= COSINE, name
        assert float(np.dot(query, expected[0])) >= COSINE, name


def raw_request(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length from `sock`: status line, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode().strip() for k, v in (line.split(b":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def test_keep_alive_and_request_ids(server: RunningServer) -> None:
    body = json.dumps({"input": ["keep", "alive"]}).encode()
    with socket.create_connection(address(server.url), timeout=60) as sock:
        for i in range(3):  # three requests, one connection
            sock.sendall(raw_request("/v1/embeddings", body, f"X-Request-ID: keepalive-{i}\r\n"))
            status, headers, answer = read_response(sock)
            assert status == b"HTTP/1.1 200 OK" and headers.get("connection") != "close"
            assert headers["x-request-id"] == f"keepalive-{i}"
            assert len(json.loads(answer)["data"]) == 2
    anonymous = requests.post(server.url + "/v1/embeddings", json={"input": "x"}, timeout=30)
    generated = anonymous.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    deadline = time.monotonic() + 10
    while f"[{generated}] POST /v1/embeddings 200" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.05)
    assert "[keepalive-2] POST /v1/embeddings 200" in server.log_text()


def test_failing_and_slow_requests_among_concurrent_ones(server: RunningServer) -> None:
    """Requests refused in the middle of a batch (too long under truncate=false, a wrong dimension) get
    their 400; every other request of the same moment gets its own, correct vectors."""
    texts = [[f"concurrent {i}: " + "mot " * (i % 40), f"second {i}"] for i in range(96)]
    expected = dict(zip([t for pair in texts for t in pair], server.expected([t for pair in texts for t in pair])))

    def call(i: int) -> tuple[int, int, Any]:
        if i % 8 == 3:
            body = {"model": "m", "input": [texts[i][0], "word " * 2000], "truncate": False}
        elif i % 8 == 5:
            body = {"model": "m", "input": texts[i], "dimensions": 20}
        else:
            body = {"model": "m", "input": texts[i]}
        response = requests.post(server.url + "/api/embed", json=body, timeout=300)
        return i, response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=48) as pool:
        answers = list(pool.map(call, range(len(texts))))
    for i, status, answer in answers:
        if i % 8 in (3, 5):
            assert status == 400, (i, answer)
            assert ("longer than max_tokens" if i % 8 == 3 else "valid: 64, 48, 32, 16") in answer["error"]
            continue
        assert status == 200, (i, answer)
        for text, vector in zip(texts[i], answer["embeddings"]):
            assert float(np.dot(vector, expected[text])) >= COSINE, (i, text)


def test_a_flood_of_idle_and_slow_connections_is_bounded(served_gguf: Path, tmp_path: Path) -> None:
    """Hundreds of connections that send nothing, trickle a request head or stall in the body cost
    no threads: real clients are answered meanwhile, and the server drops the flood after the timeout."""
    from openai import OpenAI

    timeout_s = 5.0  # long enough for 32 real requests on a loaded 2-core machine
    log = tmp_path / "serve.log"
    with running_server(served_gguf, log, "--request-timeout", str(timeout_s)) as (url, process), \
            Embedder(served_gguf, max_tokens=512) as embedder:
        target = address(url)
        idle = [socket.create_connection(target, timeout=30) for _ in range(400)]
        trickling = [socket.create_connection(target, timeout=30) for _ in range(50)]
        stalled = [socket.create_connection(target, timeout=30) for _ in range(50)]
        opened = time.monotonic()
        for sock in trickling:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        for sock in stalled:
            sock.sendall(b'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"input": ')
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        texts = [f"real client {i}" for i in range(32)]

        def real(text: str) -> np.ndarray:
            for sock in trickling:  # a byte at a time: uvicorn's own keep-alive timer would restart on each
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass
            return np.array(client.embeddings.create(model="m", input=text).data[0].embedding)

        with ThreadPoolExecutor(max_workers=16) as pool:
            vectors = np.array(list(pool.map(real, texts)))
        assert time.monotonic() - opened < timeout_s, "the real requests were not answered during the flood"
        for sock in idle:  # still open (no data, no EOF): the answers came while the flood was there
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
        assert np.min(cosines(vectors, embedder.encode(texts, batch_size=1))) >= COSINE
        for sock in idle + trickling:  # closed by the server once the head deadline passed
            sock.settimeout(timeout_s + 30)
            assert sock.recv(1024) == b""
        for sock in stalled:  # answered 408, then closed
            sock.settimeout(timeout_s + 30)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert time.monotonic() - opened < timeout_s + 20
        for sock in idle + trickling + stalled:
            sock.close()
        assert requests.get(url + "/health", timeout=30).json() == {"status": "ok"}
        assert process.poll() is None


def test_sigterm_finishes_the_requests_in_flight(served_gguf: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    texts = [f"{i} " + "in flight " * 150 for i in range(48)]
    with running_server(served_gguf, log) as (url, process), Embedder(served_gguf, max_tokens=512) as embedder:
        expected = embedder.encode(texts, batch_size=1)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(lambda: (requests.post(url + "/v1/embeddings", json={"input": texts}, timeout=300),
                                           time.monotonic()))
            time.sleep(0.2)  # the request is being embedded
            signalled = time.monotonic()
            process.terminate()
            response, answered = pending.result(timeout=300)
        assert answered > signalled, "the request finished before the signal; make it longer"
        assert response.status_code == 200
        vectors = np.array([row["embedding"] for row in response.json()["data"]])
        assert np.min(cosines(vectors, expected)) >= COSINE
        assert process.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=5)
    assert log.read_text().rstrip().endswith("stopped")
