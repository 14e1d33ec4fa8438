"""`granite-gguf serve` as a team runs it behind a load balancer (issue 22): API keys, CORS, Prometheus metrics,
OpenAPI, several models in one process, configuration from GRANITE_GGUF_* variables, JSON logs.

One server, configured from the environment only (but --port and --max-tokens, which the test passes as
flags over a GRANITE_GGUF_PORT that would fail): two models, two API keys, one CORS origin, JSON logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from granite_gguf.bindings.embedder import Embedder
from tests.helpers import Workspace
from tests.serving import COSINE, MAX_TOKENS, RunningServer, cosines, matryoshka_gguf, running_server

pytestmark = [pytest.mark.slow]

KEYS = ("key-one", "key-two")
ORIGIN = "https://app.example"


class Served(RunningServer):
    other: Embedder  # the second model, in this process


@pytest.fixture(scope="module")
def server(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    first, second = matryoshka_gguf(workspace), workspace.gguf("tiny-gpt2")
    log = tmp_path_factory.mktemp("production") / "serve.log"
    env = {"GRANITE_GGUF_MODELS": f"first={first},second={second}", "GRANITE_GGUF_API_KEY": ",".join(KEYS),
           "GRANITE_GGUF_CORS_ALLOW_ORIGIN": ORIGIN, "GRANITE_GGUF_LOG_FORMAT": "json",
           "GRANITE_GGUF_PORT": "1", "GRANITE_GGUF_WORKERS": "1"}  # port 1: the flag --port 0 must win
    with running_server(None, log, env=env) as (url, process), Embedder(first, max_tokens=MAX_TOKENS) as a, \
            Embedder(second, max_tokens=MAX_TOKENS) as b:
        served = Served(url, process, a, log)
        served.other = b
        yield served


def auth(key: str = KEYS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}, read with prometheus_client's own parser."""
    text = requests.get(server.url + "/metrics", headers=auth(), timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_api_keys_refused_and_accepted_in_each_shape(server: Served) -> None:
    import ollama
    from openai import AuthenticationError, OpenAI

    for headers in ({}, auth("wrong"), {"Authorization": f"Basic {KEYS[0]}"}):
        openai = requests.post(server.url + "/v1/embeddings", json={"input": "x"}, headers=headers, timeout=30)
        assert openai.status_code == 401 and openai.headers["WWW-Authenticate"] == "Bearer"
        assert openai.json()["error"]["code"] == "invalid_api_key"
        native = requests.post(server.url + "/api/embed", json={"model": "first", "input": "x"}, headers=headers,
                               timeout=30)
        assert native.status_code == 401 and "API key" in native.json()["error"]
    for path in ("/metrics", "/openapi.json", "/docs", "/v1/models", "/api/tags", "/api/version", "/nowhere"):
        assert requests.get(server.url + path, timeout=30).status_code == 401, path
    assert requests.get(server.url + "/health", timeout=30).json() == {"status": "ok"}  # for load balancers
    for key in KEYS:
        client = OpenAI(base_url=server.url + "/v1", api_key=key)
        assert len(client.embeddings.create(model="first", input="x").data[0].embedding) == 64
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(model="first", input="x")
    # ollama's client sends no key of its own; headers= carries one (docs/serving.md)
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=server.url).embed(model="first", input="x")
    assert refused.value.status_code == 401
    keyed = ollama.Client(host=server.url, headers=auth(KEYS[1]))
    assert len(keyed.embed(model="first", input="x").embeddings[0]) == 64


def test_cors_allowed_and_refused_origin(server: Served) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = requests.options(server.url + "/v1/embeddings", headers={"Origin": ORIGIN, **preflight}, timeout=30)
    assert allowed.status_code == 200  # answered before the key check: browsers send no credentials here
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    refused = requests.options(server.url + "/v1/embeddings", headers={"Origin": "https://evil.example", **preflight},
                               timeout=30)
    assert refused.status_code == 400 and "Access-Control-Allow-Origin" not in refused.headers
    simple = requests.post(server.url + "/v1/embeddings", json={"input": "x"}, headers={"Origin": ORIGIN, **auth()},
                           timeout=30)
    assert simple.status_code == 200 and simple.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-request-id" in simple.headers["Access-Control-Expose-Headers"].lower()
    other = requests.post(server.url + "/v1/embeddings", json={"input": "x"},
                          headers={"Origin": "https://evil.example", **auth()}, timeout=30)
    assert "Access-Control-Allow-Origin" not in other.headers


def test_two_models_answer_with_their_own_vectors_and_a_third_is_404(server: Served) -> None:
    import ollama
    from openai import NotFoundError, OpenAI

    texts = ["The cat sits on the mat.", "Die Katze sitzt auf der Matte."]
    client = OpenAI(base_url=server.url + "/v1", api_key=KEYS[0])
    native = ollama.Client(host=server.url, headers=auth())
    for name, embedder in (("first", server.embedder), ("second", server.other)):
        want = embedder.encode(texts, batch_size=1)
        got = np.array([d.embedding for d in client.embeddings.create(model=name, input=texts, encoding_format="float").data])
        assert np.min(cosines(got, want)) >= COSINE, name
        assert np.min(cosines(np.array(native.embed(model=name, input=texts).embeddings), want)) >= COSINE, name
    first = client.embeddings.create(model="first", input=texts[0], encoding_format="float").data[0].embedding
    second = client.embeddings.create(model="second", input=texts[0], encoding_format="float").data[0].embedding
    assert abs(float(np.dot(first, second))) < 0.9  # two models, two different vectors
    with pytest.raises(NotFoundError, match="third"):
        client.embeddings.create(model="third", input="x")
    with pytest.raises(ollama.ResponseError) as missing:
        native.embed(model="third", input="x")
    assert missing.value.status_code == 404 and missing.value.error == "model 'third' not found"
    assert [m.id for m in client.models.list().data] == ["first", "second"]
    assert [m.model for m in native.list().models] == ["first", "second"]
    version = requests.get(server.url + "/api/version", headers=auth(), timeout=30).json()
    assert set(version) == {"version"} and version["version"].count(".") == 2
    log = server.log_text()
    for name in ("first", "second"):
        assert f"loaded {name} (" in log and "MiB of tensors" in log


def test_metrics_count_real_requests(server: Served) -> None:
    before = scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    texts = ["metrics one", "metrics two", "metrics three"]
    for _ in range(2):
        assert requests.post(server.url + "/v1/embeddings", json={"model": "second", "input": texts}, headers=auth(),
                             timeout=30).status_code == 200
    assert requests.post(server.url + "/api/embed", json={"model": "third", "input": "x"}, headers=auth(),
                         timeout=30).status_code == 404
    assert requests.post(server.url + "/api/embed", json={"model": "first", "input": "x"}, timeout=30).status_code == 401
    after = scrape(server)
    assert delta("granite_gguf_requests_total", route="/v1/embeddings", method="POST", status="200") == 2
    assert delta("granite_gguf_request_errors_total", route="/api/embed", status="404") == 1
    assert delta("granite_gguf_request_errors_total", route="/api/embed", status="401") == 1
    assert delta("granite_gguf_inputs_embedded_total", model="second") == 6
    tokens = sum(len(server.other.tokenize(text)) for text in texts)
    assert delta("granite_gguf_tokens_embedded_total", model="second") == 2 * tokens
    assert delta("granite_gguf_request_duration_seconds_count", route="/v1/embeddings") == 2
    assert delta("granite_gguf_batch_inputs_count", model="second") >= 1
    assert after[("granite_gguf_models_loaded", ())] == 2
    assert after[("granite_gguf_model_bytes", (("model", "first"),))] > 0
    assert after[("granite_gguf_queue_inputs", (("model", "second"),))] == 0


def test_openapi_lists_every_route_and_field(server: Served) -> None:
    schema = requests.get(server.url + "/openapi.json", headers=auth(), timeout=30).json()
    paths = schema["paths"]
    expected = {"/v1/embeddings": "post", "/embeddings": "post", "/api/embed": "post", "/api/embeddings": "post",
                "/v1/models": "get", "/api/tags": "get", "/api/version": "get", "/health": "get", "/metrics": "get"}
    assert set(paths) == set(expected)
    for path, method in expected.items():
        assert set(paths[path]) == {method}, path
    components = schema["components"]["schemas"]

    def fields(path: str) -> set[str]:
        ref = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return set(components[ref.rsplit("/", 1)[1]]["properties"])

    assert fields("/v1/embeddings") == {"model", "input", "dimensions", "encoding_format", "truncate", "embd_normalize"}
    assert fields("/api/embed") == {"model", "input", "truncate", "dimensions", "options", "keep_alive"}
    assert fields("/api/embeddings") == {"model", "prompt"}
    assert "OpenAIError" in json.dumps(paths["/v1/embeddings"]["post"]["responses"])
    assert "OllamaError" in json.dumps(paths["/api/embed"]["post"]["responses"])
    docs = requests.get(server.url + "/docs", headers=auth(), timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # validation errors keep each API's shape (not FastAPI's 422 {"detail": …})
    bad = requests.post(server.url + "/v1/embeddings", json={"input": 5}, headers=auth(), timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_json_log_lines_carry_the_request_id(server: Served) -> None:
    response = requests.post(server.url + "/v1/embeddings", json={"input": "logged"},
                             headers={"X-Request-ID": "trace-42", **auth()}, timeout=30)
    assert response.headers["X-Request-ID"] == "trace-42"
    lines: list[dict[str, Any]] = []
    for line in server.wait_for_log('"request_id": "trace-42"').splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    mine = [line for line in lines if line["request_id"] == "trace-42"]
    assert mine and mine[-1]["message"].endswith("ms") and "POST /v1/embeddings 200" in mine[-1]["message"]
    assert {"time", "level", "logger", "message", "request_id"} <= set(mine[-1])
