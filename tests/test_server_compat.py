"""ollama's and llama.cpp's own embedding tests, translated case by case and run against `granite-gguf serve`.

Sources (read, then rewritten here for this model; their models and numbers are not ours):
- ollama `integration/embed_test.go` and `integration/embed_truncation_test.go` at commit baadc46d (the last
  commit with the second file), the same cases in `integration/embed_test.go` at fb30760 (which changed the
  wording of the truncate-false error and added the status-code and large-input cases), `api/types.go`
  EmbedRequest/EmbedResponse and `server/routes.go` EmbedHandler at fb30760.
- llama.cpp `tools/server/tests/unit/test_embedding.py` at commits 3a0f73e5 (object inputs, invalid inputs) and
  e8a26d4b (pooling max).

Each test is named after its case (`test_ollama_<Go test>_<subtest>`, `test_llamacpp_<test>`). ollama's
cases use all-minilm and llama.cpp's bert-bge-small: here the served file is the tiny Gemma-3-style
fixture, so "the expected vector" is this file's (the Embedder in this process) and token counts are
those of the checkpoint's own HF tokenizer. Adapted cases say how in their docstring; the two llama.cpp
cases that need `--pooling none` are not run (the server serves the pooling the file declares;
docs/serving.md lists the llama.cpp extensions).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from tests.helpers import Workspace
from tests.serving import COSINE, MAX_TOKENS, RunningServer, matryoshka_gguf, served

pytestmark = [pytest.mark.slow]

MODEL = "all-minilm"  # served under the name ollama's tests ask for, so their requests go unchanged
EPSILON = 1e-3  # llama.cpp's tolerance


@pytest.fixture(scope="module")
def server(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    gguf = matryoshka_gguf(workspace)
    log = tmp_path_factory.mktemp("compat") / "serve.log"
    with served(gguf, log, "--model-name", MODEL) as server:
        yield server


@pytest.fixture(scope="module")
def hf_tokenizer(workspace: Workspace) -> Any:
    """The checkpoint's own tokenizer (HF tokenizers), independent of llama.cpp's."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(workspace.checkpoint("tiny-gemma3") / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_tokens(hf_tokenizer: Any) -> Any:
    """Token counts as the checkpoint's own tokenizer gives them (special tokens included)."""
    return lambda text: len(hf_tokenizer.encode(text).ids)


@pytest.fixture(scope="module")
def ollama_client(server: RunningServer) -> Any:
    import ollama

    return ollama.Client(host=server.url)


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def embed_error(client: Any, **request: Any) -> Any:
    import ollama

    with pytest.raises(ollama.ResponseError) as failure:
        client.embed(**request)
    return failure.value


# ---- ollama: integration/embed_test.go (baadc46d) ----

def test_ollama_AllMiniLMEmbeddings(ollama_client: Any, server: RunningServer) -> None:
    """The older /api/embeddings: the model's vector, its full width, close to the expected one."""
    res = ollama_client.embeddings(model=MODEL, prompt="why is the sky blue?", keep_alive="10s")
    assert len(res.embedding) == server.embedder.dimension
    expected = server.embedder.encode("why is the sky blue?", normalize_embeddings=False)
    assert cosine(res.embedding, expected) >= 0.99


def test_ollama_AllMiniLMEmbed(ollama_client: Any, server: RunningServer, hf_tokens: Any) -> None:
    res = ollama_client.embed(model=MODEL, input="why is the sky blue?")
    assert len(res.embeddings) == 1 and len(res.embeddings[0]) == server.embedder.dimension
    assert cosine(res.embeddings[0], server.expected(["why is the sky blue?"])[0]) >= 0.99
    assert res.prompt_eval_count == hf_tokens("why is the sky blue?")


def test_ollama_AllMiniLMBatchEmbed(ollama_client: Any, server: RunningServer, hf_tokens: Any) -> None:
    texts = ["why is the sky blue?", "why is the grass green?"]
    res = ollama_client.embed(model=MODEL, input=texts)
    assert len(res.embeddings) == 2 and len(res.embeddings[0]) == server.embedder.dimension
    for got, want in zip(res.embeddings, server.expected(texts)):
        assert cosine(got, want) >= 0.99
    assert res.prompt_eval_count == sum(map(hf_tokens, texts))


# Adapted: all-minilm reads "why" as one token between [CLS] and [SEP], so num_ctx 3 keeps "why is the sky
# blue?" down to "why". This vocabulary reads "why" alone differently from "why" before " is"; "how" it reads
# the same, as three tokens with BOS (and it adds no EOS), so "how" plays the part of "why" with num_ctx 3.
WHY, SENTENCE = "how", "how is the sky blue?"


@pytest.fixture(scope="module")
def want_why(ollama_client: Any, hf_tokenizer: Any) -> list[float]:
    """TestAllMiniLMEmbedTruncate's `want`: the embedding of the word that num_ctx 3 keeps."""
    assert hf_tokenizer.encode(SENTENCE).ids[:3] == hf_tokenizer.encode(WHY).ids
    return list(ollama_client.embed(model=MODEL, input=WHY).embeddings[0])


def test_ollama_AllMiniLMEmbedTruncate_target_truncation(ollama_client: Any, want_why: list[float]) -> None:
    got = ollama_client.embed(model=MODEL, input=WHY)
    assert cosine(got.embeddings[0], want_why) >= COSINE


@pytest.mark.parametrize("truncate", [None, True], ids=["default truncate", "explicit truncate"])
def test_ollama_AllMiniLMEmbedTruncate_truncate(ollama_client: Any, want_why: list[float], truncate: bool | None) -> None:
    got = ollama_client.embed(model=MODEL, input=SENTENCE, truncate=truncate, options={"num_ctx": 3})
    assert cosine(got.embeddings[0], want_why) >= COSINE
    assert got.prompt_eval_count == 3  # counted after the cut


def test_ollama_AllMiniLMEmbedTruncate_truncate_error(ollama_client: Any) -> None:
    """baadc46d compares the message with "input exceeds maximum context length"; fb30760 accepts either of
    its two wordings (requireEmbedErrorContainsAny), which this message holds both of."""
    error = embed_error(ollama_client, model=MODEL, input=SENTENCE, truncate=False, options={"num_ctx": 3})
    assert error.status_code == 400
    assert "input length exceeds the context length" in error.error
    assert "exceeds maximum context length" in error.error


@pytest.mark.parametrize("num_ctx", [1, 0])
def test_ollama_AllMiniLMEmbedTruncate_input_after_truncate_error(ollama_client: Any, num_ctx: int) -> None:
    error = embed_error(ollama_client, model=MODEL, input="why is the sky blue?", truncate=True,
                        options={"num_ctx": num_ctx})
    assert error.error == "input after truncation exceeds maximum context length"
    assert error.status_code == 400


def test_ollama_AllMiniLMEmbedTruncate_boundary_truncation(ollama_client: Any) -> None:
    res = ollama_client.embed(model=MODEL, input="why is the sky blue? Why is the sky blue? hi there my",
                              options={"num_ctx": 16})
    assert len(res.embeddings) == 1 and res.prompt_eval_count <= 16


# ---- ollama: integration/embed_truncation_test.go (baadc46d) ----

def test_ollama_EmbedTruncationRefactor_single_input_token_count(ollama_client: Any) -> None:
    assert ollama_client.embed(model=MODEL, input="why is the sky blue?").prompt_eval_count > 0


def test_ollama_EmbedTruncationRefactor_batch_parallel_token_counting(ollama_client: Any) -> None:
    res = ollama_client.embed(model=MODEL, input=["cat", "dog and mouse", "bird"])
    assert len(res.embeddings) == 3 and res.prompt_eval_count > 0


def test_ollama_EmbedTruncationRefactor_truncation_single_input(ollama_client: Any, server: RunningServer) -> None:
    res = ollama_client.embed(model=MODEL, input="word " * 100, truncate=True, options={"num_ctx": 50})
    assert 0 < res.prompt_eval_count <= 50
    cut = server.embedder.encode_tokens([server.embedder.truncate(server.embedder.tokenize("word " * 100), 50)])
    assert cosine(res.embeddings[0], cut[0]) >= COSINE  # the first 50 tokens, special ones kept


def test_ollama_EmbedTruncationRefactor_truncation_batch(ollama_client: Any) -> None:
    res = ollama_client.embed(model=MODEL, input=["short", "long " * 100, "medium text"], truncate=True,
                              options={"num_ctx": 30})
    assert len(res.embeddings) == 3 and res.prompt_eval_count <= 90


def test_ollama_EmbedTruncationRefactor_truncate_false_error(ollama_client: Any) -> None:
    error = embed_error(ollama_client, model=MODEL, input="word " * 100, truncate=False, options={"num_ctx": 10})
    assert "exceeds maximum context length" in error.error


def test_ollama_EmbedTruncationRefactor_runner_token_count_accuracy(ollama_client: Any) -> None:
    base = ollama_client.embed(model=MODEL, input="test").prompt_eval_count
    batch = ollama_client.embed(model=MODEL, input=["test", "test", "test"]).prompt_eval_count
    assert base * 3 - 2 <= batch <= base * 3 + 2


# ---- ollama: integration/embed_test.go (fb30760), cases added after baadc46d ----

@pytest.mark.parametrize("words", [256, 512, 800])
def test_ollama_EmbedLargeInput(ollama_client: Any, server: RunningServer, words: int) -> None:
    res = ollama_client.embed(model=MODEL, input=" ".join(["word"] * words), keep_alive="30s")
    assert len(res.embeddings) == 1 and len(res.embeddings[0]) == server.embedder.dimension
    assert res.prompt_eval_count <= MAX_TOKENS  # the server's context: longer inputs are cut to it


@pytest.mark.parametrize("inputs", [["very long input " * 100],
                                    ["short input", "very long input " * 100, "another short input"]],
                         ids=["truncation error status code", "batch truncation error status code"])
def test_ollama_EmbedStatusCode(ollama_client: Any, inputs: list[str]) -> None:
    error = embed_error(ollama_client, model=MODEL, input=inputs, truncate=False, options={"num_ctx": 10})
    assert 400 <= error.status_code < 500
    assert "context length" in error.error


# ---- ollama: server/routes.go EmbedHandler and api/types.go, the checks its tests do not reach ----

def test_ollama_EmbedHandler_unknown_model_is_404(ollama_client: Any) -> None:
    error = embed_error(ollama_client, model="nomic-embed-text", input="x")
    assert error.status_code == 404 and error.error == "model 'nomic-embed-text' not found"
    assert len(ollama_client.embed(model=MODEL.upper() + ":latest", input="x").embeddings) == 1  # as ollama matches


def test_ollama_EmbedHandler_empty_input_loads_and_answers_nothing(ollama_client: Any) -> None:
    empties: list[str | list[str]] = ["", []]
    for empty in empties:
        assert ollama_client.embed(model=MODEL, input=empty).embeddings == []


@pytest.mark.parametrize("dimensions", [16, 20, 1, 63])
def test_ollama_EmbedHandler_any_dimensions_cut_and_renormalized(ollama_client: Any, server: RunningServer,
                                                               dimensions: int) -> None:
    """`req.Dimensions > 0 && req.Dimensions < len(embedding)`: the first values, normalized again, trained
    Matryoshka width or not (20, 1, 63 are not; the server logs it)."""
    res = ollama_client.embed(model=MODEL, input="Matryoshka", dimensions=dimensions)
    full = server.expected(["Matryoshka"])[0]
    want = full[:dimensions] / np.linalg.norm(full[:dimensions])
    np.testing.assert_allclose(res.embeddings[0], want, atol=1e-4)
    assert dimensions in (16,) or f"dimensions {dimensions} is not a trained Matryoshka size" in server.log_text()


@pytest.mark.parametrize("dimensions", [64, 1000, -3])
def test_ollama_EmbedHandler_other_dimensions_give_the_full_width(ollama_client: Any, server: RunningServer,
                                                                 dimensions: int) -> None:
    res = requests.post(server.url + "/api/embed", json={"model": MODEL, "input": "x", "dimensions": dimensions},
                        timeout=60)
    assert res.status_code == 200 and len(res.json()["embeddings"][0]) == server.embedder.dimension


# ---- llama.cpp: tools/server/tests/unit/test_embedding.py ----

def post(server: RunningServer, path: str, body: Any) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=120)


def norm_squared(vector: list[float]) -> float:
    return sum(x * x for x in vector)


@pytest.mark.parametrize("case", ["single", "pooling_mean", "pooling_max"])
def test_llamacpp_embedding_single(server: RunningServer, case: str) -> None:
    """Adapted: llama-server's --pooling picks the pooling of these three cases; here it is the file's own,
    so the three send the same request."""
    res = post(server, "/v1/embeddings", {"input": "I believe the meaning of life is"})
    assert res.status_code == 200
    data = res.json()["data"]
    assert len(data) == 1 and len(data[0]["embedding"]) > 1
    assert abs(norm_squared(data[0]["embedding"]) - 1) < EPSILON


MULTIPLE = ["I believe the meaning of life is", "Write a joke about AI from a very long prompt which will not be truncated",
            "This is a test", "This is another test"]


@pytest.mark.parametrize("texts", [MULTIPLE, ["a " * 253, "b " * 254, "c " * 255, "d " * 256],
                                   ["I believe the meaning of life is", "Write a joke about AI", "This is a test"],
                                   ["I believe the meaning of life is", "Write a joke about AI", "This is a test",
                                    "This is another test"]],
                         ids=["multiple", "multiple_with_fa", "pooling_mean_multiple", "pooling_max_multiple"])
def test_llamacpp_embedding_multiple(server: RunningServer, texts: list[str]) -> None:
    res = post(server, "/v1/embeddings", {"input": texts})
    assert res.status_code == 200
    data = res.json()["data"]
    assert len(data) == len(texts) and all(len(d["embedding"]) > 1 for d in data)
    for d, want in zip(data, server.expected(texts)):  # beyond llama.cpp's checks: the right vector, in order
        assert cosine(d["embedding"], want) >= COSINE


MIXED = [
    ("", False), ("string", False), ([12, 34, 56], False), ([12, 34, "string", 56, 78], False),
    (["string1", "string2"], True), (["string1", [12, 34, 56]], True), ([[12, 34, 56], [12, 34, 56]], True),
    ([[12, 34, 56], [12, "string", 34, 56]], True),
    ({"prompt_string": "string"}, False), ({"content": [{"type": "text", "text": "string"}]}, False),
    (["string1", {"prompt_string": "string2"}, {"content": [{"type": "text", "text": "string3"}]}], True),
]


@pytest.mark.parametrize(("value", "is_multi_prompt"), MIXED)
def test_llamacpp_embedding_mixed_input(server: RunningServer, value: Any, is_multi_prompt: bool) -> None:
    res = post(server, "/v1/embeddings", {"input": value})
    assert res.status_code == 200, res.text
    data = res.json()["data"]
    if is_multi_prompt:
        assert len(data) == len(value) and all(len(d["embedding"]) > 1 for d in data)
    else:
        assert len(data[0]["embedding"]) > 1


def test_llamacpp_embedding_mixed_input_is_read_as_llama_server_reads_it(server: RunningServer, hf_tokenizer: Any) -> None:
    """Beyond llama.cpp's checks: ids as given, and in a mixed list the first string with its special tokens and
    later ones without (tokenize_mixed in tools/server/server-common.cpp)."""
    tokens = hf_tokenizer.encode("string").ids
    inner = hf_tokenizer.encode("string", add_special_tokens=False).ids
    res = post(server, "/v1/embeddings", {"input": [[12, 34, 56], ["string", 12], [12, "string"]]})
    assert res.status_code == 200, res.text
    want = server.embedder.encode_tokens([[12, 34, 56], tokens + [12], [12, *inner]], batch_size=1)
    for d, w in zip(res.json()["data"], want):
        assert cosine(d["embedding"], w) >= COSINE


def test_llamacpp_embedding_content_text_same_as_string(server: RunningServer) -> None:
    res = post(server, "/v1/embeddings", {"input": ["hello world", {"content": [{"type": "text", "text": "hello "},
                                                                                 {"type": "text", "text": "world"}]}]})
    assert res.status_code == 200
    data = res.json()["data"]
    assert data[0]["embedding"] == data[1]["embedding"]


@pytest.mark.parametrize("value", [[], {"content": "string"}, {"content": [{"type": "input_audio", "input_audio": {}}]},
                                   {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
def test_llamacpp_embedding_invalid_input(server: RunningServer, value: Any) -> None:
    res = post(server, "/v1/embeddings", {"input": value})
    assert res.status_code == 400
    assert res.json()["error"]["type"] == "invalid_request_error"


def test_llamacpp_embedding_native_shape(server: RunningServer) -> None:
    """test_embedding_pooling_none's route and shape, with the file's pooling: llama-server's /embeddings
    answers [{index, embedding: [vector]}] (one vector per input when pooled; per token only with
    --pooling none, which this server does not serve)."""
    res = post(server, "/embeddings", {"input": "hello hello hello"})
    assert res.status_code == 200
    body = res.json()
    assert isinstance(body, list) and body[0]["index"] == 0 and len(body[0]["embedding"]) == 1
    assert cosine(body[0]["embedding"][0], server.expected(["hello hello hello"])[0]) >= COSINE
    content = post(server, "/v1/embeddings", {"content": "hello hello hello"}).json()  # "content": not OAI
    assert isinstance(content, list) and content[0]["embedding"] == body[0]["embedding"]


@pytest.mark.parametrize("many", [False, True], ids=["openai_library_single", "openai_library_multiple"])
def test_llamacpp_embedding_openai_library(server: RunningServer, many: bool) -> None:
    """Adapted: llama.cpp asks for model "text-embedding-3-small", which llama-server ignores; this server
    answers a name it does not serve with OpenAI's 404, so the case asks for the served name."""
    from openai import NotFoundError, OpenAI

    client = OpenAI(api_key="dummy", base_url=server.url + "/v1")
    res = client.embeddings.create(model=MODEL, input=MULTIPLE if many else MULTIPLE[0])
    assert len(res.data) == (4 if many else 1) and all(len(d.embedding) > 1 for d in res.data)
    with pytest.raises(NotFoundError, match="text-embedding-3-small"):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_llamacpp_embedding_error_prompt_too_long(server: RunningServer) -> None:
    """Adapted: llama-server refuses an input past its batch; this server cuts it by default (as
    sentence-transformers does) and refuses it with "truncate": false."""
    res = post(server, "/v1/embeddings", {"input": "This is a test " * 512, "truncate": False})
    assert res.status_code != 200
    assert "too large" in res.json()["error"]["message"]
    assert post(server, "/v1/embeddings", {"input": "This is a test " * 512}).status_code == 200


@pytest.mark.parametrize("count", [5, 2], ids=["same_prompt_give_same_result", "pooling_max_same_prompt"])
def test_llamacpp_same_prompt_give_same_result(server: RunningServer, count: int) -> None:
    res = post(server, "/v1/embeddings", {"input": ["I believe the meaning of life is"] * count})
    assert res.status_code == 200
    data = res.json()["data"]
    assert len(data) == count
    for d in data[1:]:
        assert all(abs(x - y) < EPSILON for x, y in zip(data[0]["embedding"], d["embedding"]))


@pytest.mark.parametrize("content", ["I believe the meaning of life is", "This is a test"])
def test_llamacpp_embedding_usage_single(server: RunningServer, hf_tokens: Any, content: str) -> None:
    usage = post(server, "/v1/embeddings", {"input": content}).json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] == hf_tokens(content)


def test_llamacpp_embedding_usage_multiple(server: RunningServer, hf_tokens: Any) -> None:
    usage = post(server, "/v1/embeddings", {"input": ["I believe the meaning of life is"] * 2}).json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] == 2 * hf_tokens("I believe the meaning of life is")


def test_llamacpp_embedding_openai_library_base64(server: RunningServer) -> None:
    text = "Test base64 embedding output"
    vec0 = post(server, "/v1/embeddings", {"input": text}).json()["data"][0]["embedding"]
    res = post(server, "/v1/embeddings", {"input": text, "encoding_format": "base64"})
    assert res.status_code == 200 and len(res.json()["data"]) == 1
    encoded = res.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = base64.b64decode(encoded)
    floats = struct.unpack(f"{len(decoded) // 4}f", decoded)
    assert len(floats) == len(vec0)
    assert all(abs(x - y) < EPSILON for x, y in zip(floats, vec0))


def test_llamacpp_token_ids_are_checked_against_the_vocabulary(server: RunningServer) -> None:
    """Beyond llama.cpp's checks ("Prompt contains invalid tokens" there): an id outside the vocabulary is a
    400 that says where the ids probably came from."""
    vocab = server.embedder.vocab_size
    res = post(server, "/v1/embeddings", {"input": [[12, vocab]]})
    assert res.status_code == 400
    message = res.json()["error"]["message"]
    assert f"token id {vocab} is outside" in message and "check_embedding_ctx_length=False" in message
    assert post(server, "/v1/embeddings", {"input": [[12, vocab - 1]]}).status_code == 200
    assert post(server, "/v1/embeddings", {"input": [[12, -1]]}).status_code == 400


def test_llamacpp_embd_normalize(server: RunningServer) -> None:
    raw = post(server, "/embeddings", {"input": "I believe", "embd_normalize": -1}).json()[0]["embedding"][0]
    np.testing.assert_allclose(raw, server.embedder.encode("I believe", normalize_embeddings=False), atol=1e-5)
    assert post(server, "/embeddings", {"input": "I believe", "embd_normalize": 1}).status_code == 400


def test_the_server_survived(server: RunningServer) -> None:
    assert server.process.poll() is None
    assert requests.get(server.url + "/health", timeout=30).json() == {"status": "ok"}
