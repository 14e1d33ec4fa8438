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
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pydantic import SecretStr

from granite_gguf.bindings.embedder import Embedder
from tests.helpers import Workspace, cli_command
from tests.serving import COSINE, DIMS, MAX_TOKENS, RunningServer, cosines, matryoshka_gguf, running_server, served

pytestmark = [pytest.mark.slow]

MODEL = "granite"  # the name the shared server serves its file under


@pytest.fixture(scope="module")
def served_gguf(workspace: Workspace) -> Path:
    return matryoshka_gguf(workspace)


@pytest.fixture(scope="module")
def server(served_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with served(served_gguf, log, "--workers", "2", "--model-name", MODEL) as server:
        yield server


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
    assert len(single.data) == 1 and single.model == MODEL


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
    with pytest.raises(ollama.ResponseError, match='exceeds the context length.*send "truncate": true'):
        client.embed(model="granite", input="word " * 2000, truncate=False)
    assert len(client.embed(model="granite", input="word " * 2000).embeddings[0]) == 64


BAD_REQUESTS = [
    ("/v1/embeddings", {"model": MODEL}, 400, "input"),
    ("/v1/embeddings", {"input": 42}, 400, "input"),
    ("/v1/embeddings", {"input": []}, 400, "input"),
    ("/v1/embeddings", {"input": ["ok", None]}, 400, "input"),
    ("/v1/embeddings", {"input": [[1, 2, 10**6]]}, 400, "outside this model's vocabulary"),
    ("/v1/embeddings", {"input": [[]]}, 400, "empty list of token ids"),
    ("/v1/embeddings", {"input": "x", "dimensions": -1}, 400, "dimensions"),
    ("/v1/embeddings", {"input": "x", "dimensions": 4096}, 400, "from 1 to 64"),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, 400, "from 1 to 64"),
    ("/v1/embeddings", {"input": "x", "model": "other"}, 404, "`other` does not exist"),
    ("/v1/embeddings", {"input": "x", "dimensions": "32"}, 400, "dimensions"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": ["x"] * 257}, 400, "at most 256"),
    ("/api/embed", {"model": MODEL, "input": "x", "truncate": "yes"}, 400, "truncate"),
    ("/api/embed", {"model": MODEL, "input": [1, 2]}, 400, "invalid input type"),
    ("/api/embed", {"model": MODEL, "input": "x", "options": {"num_ctx": "8"}}, 400, "num_ctx"),
    ("/api/embed", {"model": "other", "input": "x"}, 404, "model 'other' not found"),
    ("/api/embed", {"input": "x"}, 404, "model '' not found"),
    ("/api/embeddings", {"model": MODEL, "prompt": ["x"]}, 400, "prompt"),
    ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
    ("/api/embeddings", {"model": "other", "prompt": "x"}, 404, 'model "other" not found, try pulling it first'),
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
        response = requests.post(server.url + path, json={"model": MODEL, "input": texts}, timeout=300)
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
    # --gpu-layers reaches llama.cpp; a CPU-only build keeps every layer on the CPU, with the same vectors
    offloaded = subprocess.run(cli_command("embed", str(server.embedder.path), "first text", "--gpu-layers", "-1"),
                               capture_output=True, text=True, timeout=120)
    assert offloaded.returncode == 0, offloaded.stderr
    assert float(np.dot(json.loads(offloaded.stdout), server.expected(["first text"])[0])) >= COSINE
    bad = subprocess.run(cli_command("embed", str(server.embedder.path), "x", "--dim", "20"),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "valid: 64, 48, 32, 16" in bad.stderr


def test_model_listing(server: RunningServer) -> None:
    assert requests.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"] == MODEL
    assert requests.get(server.url + "/api/tags", timeout=30).json()["models"][0]["name"] == MODEL
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
    assert "[keepalive-2] POST /v1/embeddings 200" in server.wait_for_log(f"[{generated}] POST /v1/embeddings 200")


def test_failing_and_slow_requests_among_concurrent_ones(server: RunningServer) -> None:
    """Requests refused in the middle of a batch (too long under truncate=false, a wrong dimension) get
    their 400; every other request of the same moment gets its own, correct vectors."""
    texts = [[f"concurrent {i}: " + "mot " * (i % 40), f"second {i}"] for i in range(96)]
    expected = dict(zip([t for pair in texts for t in pair], server.expected([t for pair in texts for t in pair])))

    def call(i: int) -> tuple[int, int, Any]:
        if i % 8 == 3:
            body = {"model": MODEL, "input": [texts[i][0], "word " * 2000], "truncate": False}
        elif i % 8 == 5:
            body = {"model": MODEL, "input": texts[i], "dimensions": "20"}
        else:
            body = {"model": MODEL, "input": texts[i]}
        response = requests.post(server.url + "/api/embed", json=body, timeout=300)
        return i, response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=48) as pool:
        answers = list(pool.map(call, range(len(texts))))
    for i, status, answer in answers:
        if i % 8 in (3, 5):
            assert status == 400, (i, answer)
            assert ("exceeds the context length" if i % 8 == 3 else "dimensions must be an integer") in answer["error"]
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
            Embedder(served_gguf, max_tokens=MAX_TOKENS) as embedder:
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
            return np.array(client.embeddings.create(model="served", input=text).data[0].embedding)

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
    with running_server(served_gguf, log) as (url, process), Embedder(served_gguf, max_tokens=MAX_TOKENS) as embedder:
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


def strict_json(text: str) -> Any:
    """JSON as a strict parser reads it: a bare NaN or Infinity is an error, not a float."""
    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in the answer")
    return json.loads(text, parse_constant=refuse)


def test_hostile_json_gets_400_in_each_shape(server: RunningServer) -> None:
    """Issue 21 item 14: 100k-deep JSON and a 1M-digit number were 500s with a logged traceback."""
    deep = b"[" * 100_000 + b"]" * 100_000
    digits = b'{"input": "x", "dimensions": ' + b"9" * 1_000_000 + b"}"
    for body in (deep, digits):
        openai = requests.post(server.url + "/v1/embeddings", data=body, timeout=60)
        assert openai.status_code == 400, openai.text[:200]
        assert openai.json()["error"]["type"] == "invalid_request_error"
        ollama = requests.post(server.url + "/api/embed", data=body, timeout=60)
        assert ollama.status_code == 400 and isinstance(ollama.json()["error"], str)
    assert "Traceback" not in server.log_text()
    assert requests.post(server.url + "/v1/embeddings", json={"input": "alive"}, timeout=30).status_code == 200


def test_token_id_input_is_embedded_as_those_tokens(server: RunningServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    ids = [server.embedder.tokenize(text) for text in TEXTS[:2]]
    single = client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
    several = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert float(np.dot(single.data[0].embedding, server.expected(TEXTS[:1])[0])) >= COSINE
    assert np.min(cosines(np.array([d.embedding for d in several.data]), server.expected(TEXTS[:2]))) >= COSINE
    assert several.usage.prompt_tokens == sum(map(len, ids))


def test_langchain_openai_defaults_send_tiktoken_ids(server: RunningServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """LangChain's OpenAIEmbeddings by default (check_embedding_ctx_length=True) tokenizes with tiktoken and
    sends OpenAI's token ids, not this model's: offline it fails before any request (tiktoken fetches its
    table), online its ids are the wrong tokens, refused when past the vocabulary. Hence the setting in
    docs/serving.md, as LangChain documents it for servers other than OpenAI's."""
    from langchain_openai import OpenAIEmbeddings
    from pydantic import SecretStr

    default = OpenAIEmbeddings(model=MODEL, base_url=server.url + "/v1", api_key=SecretStr("unused"))
    assert default.check_embedding_ctx_length and default.tiktoken_enabled  # LangChain's defaults
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # no table here, and fetching one fails at once:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a closed loopback port, never the internet
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    before = server.log_text().count("POST /v1/embeddings")
    with pytest.raises(Exception, match="(?i)proxy|connect|max retries"):
        default.embed_documents(TEXTS[:1])
    assert server.log_text().count("POST /v1/embeddings") == before  # it never reached the server
    # With its table, LangChain would send a list of token-id lists: cl100k_base ids run up to 100,255
    tiktoken_like = [[791, 8415, 23874, 389, 279, 5634, 13]]  # "The cat sits on the mat." in cl100k_base
    refused = requests.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": tiktoken_like}, timeout=30)
    assert server.embedder.vocab_size <= 8415 and refused.status_code == 400
    assert "check_embedding_ctx_length=False" in refused.json()["error"]["message"]


def test_a_model_that_gives_nan_answers_500_in_each_shape(served_gguf: Path, tmp_path: Path) -> None:
    """Issue 21 item 9, the HTTP side: a file whose weights are NaN (it passes `check`, so served here with
    --unsafe-skip-check in case a later check refuses it) never gets a bare NaN on the wire."""
    from gguf import GGUFReader

    broken = tmp_path / "nan.gguf"
    broken.write_bytes(served_gguf.read_bytes())
    reader = GGUFReader(broken, "r+")
    norms = [t for t in reader.tensors if t.name.endswith("norm.weight") and t.data.dtype == np.float32]
    assert norms, [t.name for t in reader.tensors]
    for tensor in norms:
        tensor.data[...] = np.nan
    reader.data.flush()
    del reader
    with running_server(broken, tmp_path / "serve.log", "--unsafe-skip-check") as (url, process):
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/embeddings", {"input": "x"}),
                           ("/api/embed", {"model": "nan", "input": "x"}),
                           ("/api/embeddings", {"model": "nan", "prompt": "x"})):
            response = requests.post(url + path, json=body, timeout=60)
            assert response.status_code == 500, (path, response.text[:300])
            error = strict_json(response.text)["error"]
            message = error if path.startswith("/api/") else error["message"]
            assert "NaN or Inf" in message, (path, message)
            assert path.startswith("/api/") or error["type"] == "server_error"
        assert process.poll() is None
        assert requests.get(url + "/health", timeout=30).json() == {"status": "ok"}
