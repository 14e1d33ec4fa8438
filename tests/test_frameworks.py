"""The frameworks the Granite Embedding R2 announcement names, beside the LangChain, LlamaIndex, openai and
ollama clients of tests/test_server.py: Haystack's OpenAI and ollama embedders against `granite-gguf serve`,
and Milvus (milvus-lite, a local Milvus in a file) loaded with `embed-corpus` output and searched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from tests.helpers import Workspace, run_cli
from tests.serving import COSINE, RunningServer, cosines, matryoshka_gguf, served

pytestmark = [pytest.mark.slow]

MODEL = "granite"
TEXTS = ["The cat sits on the mat.", "Die Katze sitzt auf der Matte.", "A stock market crash in 1929.",
         "Photosynthesis turns light into sugar.", "猫がマットの上に座っている。"]


@pytest.fixture(scope="module")
def server(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    gguf = matryoshka_gguf(workspace)
    log = tmp_path_factory.mktemp("frameworks") / "serve.log"
    with served(gguf, log, "--model-name", MODEL) as server:
        yield server


def test_haystack_openai_embedders(server: RunningServer) -> None:
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
    from haystack.utils import Secret

    key, url = Secret.from_token("unused"), server.url + "/v1"
    query = OpenAITextEmbedder(api_key=key, model=MODEL, api_base_url=url).run(text=TEXTS[0])
    assert float(np.dot(query["embedding"], server.expected(TEXTS[:1])[0])) >= COSINE
    documents = OpenAIDocumentEmbedder(api_key=key, model=MODEL, api_base_url=url).run(
        documents=[Document(content=text) for text in TEXTS])
    vectors = np.array([document.embedding for document in documents["documents"]])
    assert np.min(cosines(vectors, server.expected(TEXTS))) >= COSINE
    short = OpenAITextEmbedder(api_key=key, model=MODEL, api_base_url=url, dimensions=16).run(text=TEXTS[0])
    assert float(np.dot(short["embedding"], server.expected(TEXTS[:1], 16)[0])) >= COSINE


def test_haystack_ollama_embedders(server: RunningServer) -> None:
    from haystack import Document
    from haystack_integrations.components.embedders.ollama import OllamaDocumentEmbedder, OllamaTextEmbedder

    query = OllamaTextEmbedder(model=MODEL, url=server.url).run(text=TEXTS[1])["embedding"]
    assert isinstance(query, list) and float(np.dot(query, server.expected(TEXTS[1:2])[0])) >= COSINE
    embedded = OllamaDocumentEmbedder(model=MODEL, url=server.url).run(
        documents=[Document(content=text) for text in TEXTS])["documents"]
    vectors = np.array([document.embedding for document in embedded if isinstance(document, Document)])
    assert len(vectors) == len(TEXTS)
    assert np.min(cosines(vectors, server.expected(TEXTS))) >= COSINE


def test_milvus_lite_finds_the_right_neighbours_of_embed_corpus_output(server: RunningServer, tmp_path: Path) -> None:
    """embed-corpus writes Parquet; Milvus (milvus-lite) indexes it; a query embedded by the server finds its own
    text first, and Milvus' top 3 by cosine equal the top 3 computed here from the same vectors."""
    from pymilvus import DataType, MilvusClient

    rng = np.random.default_rng(3)
    words = "river stone market light sugar cat mat engine cloud violin harbour theorem".split()
    corpus = TEXTS + [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) + f" #{i}" for i in range(60)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(corpus)))
    out = tmp_path / "vectors"
    assert run_cli("embed-corpus", str(source), "--model", str(server.embedder.path), "--out", str(out),
                   "--batch-rows", "25", "--no-progress") == 0
    table = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("id")
    ids = table.column("id").to_pylist()
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    assert ids == list(range(len(corpus)))

    client = MilvusClient(str(tmp_path / "milvus.db"))
    try:
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
        client.create_collection("docs", schema=schema, index_params=index)
        client.insert("docs", [{"id": i, "vector": v.tolist()} for i, v in zip(ids, vectors)])
        queries = [TEXTS[0], TEXTS[3], "a cat on a mat", "harbour engine theorem"]
        answer = requests.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": queries}, timeout=60)
        asked = np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)
        hits = client.search("docs", data=asked.tolist(), limit=3, search_params={"metric_type": "COSINE"})
    finally:
        client.close()
    found = [[hit["id"] for hit in row] for row in hits]
    assert found[0][0] == 0 and found[1][0] == 3  # a stored text finds itself first
    brute = np.argsort(-(asked @ vectors.T), axis=1)[:, :3]
    assert found == brute.tolist()  # (the tiny fixture's weights are random: no closeness of meaning to test)
