"""Real llama.cpp `llama-server`s serve the converted files: same tokens, same vectors as the Embedder and PyTorch.

Two binaries, each test through both (RUNNERS):
- llama-server 0.3.36, built by scripts/build-llama-server.sh from the same llama.cpp as the bindings, started the
  way docs/commands.md's llama-server section says;
- ollama's runner: llama-server at llama.cpp b10488 with ollama's compat hooks (scripts/build-ollama-runner.sh),
  started with the arguments ollama fb30760 passes for an embedding model (ollama_runner_arguments), num_ctx and
  num_batch taken from the Modelfile granite-gguf writes for the file. The nearest test to `ollama embed` this
  machine allows; ollama's Go API layer in front of it is not run (docs/ollama.md).

What the server returns, for a pooled (CLS/MEAN) model:
- POST /v1/embeddings {"input": [...]} → {"data": [{"index", "embedding": [floats]}], "usage":
  {"prompt_tokens", "total_tokens"}}: one flat vector per input, already L2-normalized (the server's
  default `embd_normalize` is 2); prompt_tokens is the sum over all inputs, BOS/EOS included.
- POST /embedding {"content": text} → [{"index": 0, "embedding": [[floats]]}]: a list of results whose
  "embedding" is a list of vectors (one, for a pooled model), also L2-normalized.
The vectors are normalized again here anyway, so the comparison does not depend on that default.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from tokenizers import Tokenizer

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.quantize import convert_set
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.gguf_file.header import read_header
from granite_gguf.modelfiles.modelfile import generate_modelfile, parse_modelfile
from granite_gguf.probes import CODE, EMOJI, LONG_WORDS, gate_texts, long_text
from granite_gguf.verify import gate_of
from tests.helpers import FAMILIES, Workspace, free_port
from tests.services import installed_binary, log_tail, started

pytestmark = [pytest.mark.slow, pytest.mark.llama_server]

MIN_COSINE_F32 = 0.99999
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


def readme_arguments(gguf: Path, port: int, n: int) -> list[str]:
    """llama-server as docs/commands.md runs it: context, batch and micro-batch all `n` (a non-causal model must get each
    input in one micro-batch), one slot, flash attention on as the bindings run it."""
    return ["-m", str(gguf), "--embedding", "--host", "127.0.0.1", "--port", str(port), "-c", str(n), "-b", str(n),
            "-ub", str(n), "-np", "1", "-t", "2", "-fa", "on", "--no-webui"]


def ollama_runner_arguments(gguf: Path, port: int, n: int) -> list[str]:
    """What ollama fb30760 starts llama-server with for an embedding model on a CPU (llm/llama_server.go
    startLlamaServer, appendBatchArgs, embeddingBatchSize; server/sched.go: embedding models get one slot; no -ngl or
    -t unless num_gpu/num_thread are set; flash attention "auto" when every device supports it, as the CPU does).
    num_ctx and num_batch are those of the Modelfile granite-gguf generates for the file; `n` is not used."""
    modelfile = gguf.with_name(gguf.stem + ".Modelfile")
    params = parse_modelfile(generate_modelfile(gguf, modelfile))[0].parameters()
    num_ctx, num_parallel = params["num_ctx"], 1
    batch = min(params["num_batch"], num_ctx * num_parallel)
    return ["--model", str(gguf), "--port", str(port), "--host", "127.0.0.1", "--no-webui", "--offline",
            "-c", str(num_ctx * num_parallel), "-np", str(num_parallel),
            "--log-verbosity", "4", "--no-log-prefix", "--no-log-timestamps",
            "--flash-attn", "auto", "--embedding", "-b", str(batch), "-ub", str(batch)]


@dataclass(frozen=True)
class Runner:
    name: str
    binary: str  # in .venv/bin
    variable: str  # overrides the binary's path
    script: str  # builds it
    arguments: Callable[[Path, int, int], list[str]]


RUNNERS = [
    Runner("llama-server-0.3.36", "llama-server", "GRANITE_GGUF_LLAMA_SERVER", "build-llama-server.sh", readme_arguments),
    Runner("ollama-runner-b10488", "ollama-llama-server", "GRANITE_GGUF_OLLAMA_RUNNER", "build-ollama-runner.sh",
           ollama_runner_arguments),
]


@dataclass
class Server:
    url: str
    log: Path
    embedder: Embedder
    texts: list[str]
    checkpoint: Path
    runner: Runner

    def log_text(self) -> str:
        return f"server {log_tail(self.log)}"

    def post(self, route: str, body: dict[str, Any]) -> Any:
        response = requests.post(self.url + route, json=body, timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 200, f"{route}: HTTP {response.status_code} {response.text[:500]}\n{self.log_text()}"
        return response.json()


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@contextmanager
def serving(runner: Runner, gguf: Path, n: int, log: Path) -> Iterator[str]:
    """The runner serving `gguf` on a free loopback port; yields its URL."""
    binary = installed_binary(runner.binary, runner.variable, runner.script)
    port = free_port()
    with started([str(binary), *runner.arguments(gguf, port, n)], f"http://127.0.0.1:{port}/health", log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module", params=[(runner, family) for runner in RUNNERS for family in FAMILIES],
                ids=[f"{runner.name}-{family}" for runner in RUNNERS for family in FAMILIES])
def server(request: pytest.FixtureRequest, workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    runner, family = request.param
    gguf = workspace.gguf(family, "f32")
    embedder = Embedder(gguf)
    # Inputs up to the Embedder's own limit (the file's context, at most 8,192), and the
    # server sized the same way: a non-causal model must get each input in one micro-batch.
    n = embedder.max_tokens
    texts = SHORT_TEXTS + [long_text(0, 2_500), long_text(5_000, 6_000)]
    texts = [t for t in texts if len(embedder.tokenize(t)) <= n]
    assert max(len(embedder.tokenize(t)) for t in texts) >= 1_000, "no long input within the limit"
    log = tmp_path_factory.mktemp(f"{runner.name}-{family}") / "server.log"
    try:
        with serving(runner, gguf, n, log) as url:
            yield Server(url, log, embedder, texts, workspace.checkpoint(family), runner)
    finally:
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


def test_the_ollama_runner_loads_through_the_compat_hooks(server: Server) -> None:
    """scripts/ollama-runner/compat-hooks.patch is in the binary: its loader called the hook, which let the file be."""
    hooked = "architecture 'modern-bert' has no ollama translation; loaded as it is"
    assert (hooked in server.log.read_text(errors="replace")) == (server.runner.name == "ollama-runner-b10488")


# The parity matrix: each tokenizer family in the gguf-py types, and llama.cpp's K-quant and a recipe on one family.
PARITY_FILES = [(family, label) for family in FAMILIES for label in ("f32", "f16", "q8_0")] + [
    ("tiny-o200k", "q4_k_m"), ("tiny-o200k", "q8_0+emb_q4_k")]


def parity_file(workspace: Workspace, family: str, label: str) -> Path:
    """The GGUF of `family` written as `label`: gguf-py's types by the Workspace, llama.cpp's by the quantizer."""
    output = OutType.parse(label)
    if label in ("f32", "f16", "q8_0"):
        return workspace.gguf(family, label)
    folder = workspace.root / f"parity-{family}-{output.file_label}"
    if not folder.exists():
        folder.mkdir()
        convert_set(open_checkpoint(str(workspace.checkpoint(family))), folder, [output], model_name=family)
    (path,) = folder.glob("*.gguf")  # named for what it holds: hidden 64 leaves no tensor a K-quant
    return path


@pytest.mark.parametrize("runner", RUNNERS, ids=[runner.name for runner in RUNNERS])
@pytest.mark.parametrize("family, label", PARITY_FILES, ids=[f"{family}-{label}" for family, label in PARITY_FILES])
def test_parity_with_pytorch_through_the_server(runner: Runner, family: str, label: str, workspace: Workspace,
                                                 tmp_path: Path) -> None:
    """The server's token ids equal HF's and its vectors reach the gate of the file's type against the PyTorch
    reference (verify.py), on `release`'s gate set (every long probe, every script; 400 of the 2,096 texts: the
    full set through HTTP took 10 minutes for one file) where a text fits the reference's limit uncut."""
    gguf = parity_file(workspace, family, label)
    gate = gate_of(read_header(gguf))
    assert gate is not None, f"{label}: no gate"
    reference = workspace.reference(family)
    with Embedder(gguf) as embedder:
        n = embedder.max_tokens
    gate_set = set(gate_texts())
    chosen = [i for i, (text, ids) in enumerate(zip(reference.texts, reference.token_ids))
              if text in gate_set and len(ids) <= min(reference.limit, n)]
    assert len(chosen) >= 0.9 * len(gate_set) and max(len(reference.token_ids[i]) for i in chosen) >= 500
    with serving(runner, gguf, n, tmp_path / "server.log") as url:
        def post(route: str, body: dict[str, Any]) -> Any:
            response = requests.post(url + route, json=body, timeout=REQUEST_TIMEOUT_S)
            assert response.status_code == 200, f"{route}: {response.status_code} {response.text[:300]}"
            return response.json()

        for i in chosen:
            got = post("/tokenize", {"content": reference.texts[i], "add_special": True})["tokens"]
            assert got == reference.token_ids[i], f"text {i}: {reference.texts[i][:60]!r}"
        vectors = np.array([post("/v1/embeddings", {"input": reference.texts[i], "model": "x"})["data"][0]["embedding"]
                            for i in chosen])
    cosines = np.sum(unit(vectors) * unit(reference.vectors[chosen]), axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= gate, f"{label}: cosine {cosines[worst]:.6f} < {gate} on {reference.texts[chosen[worst]][:60]!r}"
