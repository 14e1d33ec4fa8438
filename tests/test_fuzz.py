"""Property-based fuzzing of every parser that reads outside input: a bad input gives a clear error.

The allowed outcomes are a result or the project's own error type (UserError, RequestError); any
other exception, or a hang, fails. Where a pass must mean more (a GGUF's hyperparameters, a registry
manifest), the test asserts what the pass promises. The suite runs FUZZ_EXAMPLES cases per input kind (200 by
default); scripts/fuzz.sh runs 10,000 each. Crashes found become examples in REGRESSIONS below.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFValueType
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from granite_gguf.bindings.batching import Batcher
from granite_gguf.bindings.embedder import Embedder
from granite_gguf.bindings.server import parse_json_object
from granite_gguf.bindings.service import EmbeddingService, RequestError, ServedModel
from granite_gguf.convert.modern_bert import ModernBertSpec
from granite_gguf.convert.source import open_checkpoint, read_safetensors_header
from granite_gguf.convert.tokenizer import build_vocab
from granite_gguf.dev.fixtures import build_fixture
from granite_gguf.errors import UserError
from granite_gguf.gguf_file.contract import check_gguf
from granite_gguf.gguf_file.header import GGUFCheckError, read_header
from granite_gguf.gguf_file.rewrite import key_entries, rewrite_keys
from granite_gguf.modelfiles import registry
from granite_gguf.modelfiles.modelfile import check_modelfile
from granite_gguf.modelfiles.store import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    PARAMS_MEDIA_TYPE,
    ModelName,
    blob_file_name,
    manifest_file_path,
)

pytestmark = [pytest.mark.slow]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fixture("tiny-o200k", tmp_path_factory.mktemp("fuzz") / "tiny-o200k")


@pytest.fixture(scope="module")
def good_gguf(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from granite_gguf.convert.types import OutType
    from granite_gguf.convert.writer import convert

    path = tmp_path_factory.mktemp("fuzz-gguf") / "good.gguf"
    return convert(open_checkpoint(str(fixture_dir)), path, OutType.F16).read_bytes()


def mutate(document: Any, path: list[int], replacement: Any) -> Any:
    """Replace the value reached by following `path` (indices into keys/items, modulo their count)."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return replacement
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = keys[path[0] % len(keys)]
    document[key] = mutate(document[key], path[1:], replacement)
    return document


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_gguf_check(good_gguf: bytes, tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]],
                    cut: int | None) -> None:
    data = bytearray(good_gguf[:cut] if cut is not None else good_gguf)
    for position, value in edits:
        if position < len(data):
            data[position] = value
    path = tmp_path_factory.getbasetemp() / "fuzz.gguf"
    path.write_bytes(bytes(data))
    try:
        check_gguf(path)
    except GGUFCheckError:
        pass


@FUZZ
@given(header=st.one_of(json_values, st.dictionaries(st.text(max_size=8), st.fixed_dictionaries(
    {"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "X"]) | json_values,
     "shape": st.lists(st.integers(-2, 1 << 40), max_size=4) | json_values,
     "data_offsets": st.lists(st.integers(-2, 1 << 40), max_size=3) | json_values}), max_size=3)),
       declared=st.one_of(st.none(), st.integers(0, 1 << 64 - 1)), payload=st.binary(max_size=64))
@example(header={"": {"dtype": [], "shape": [], "data_offsets": []}}, declared=None, payload=b"")  # was a TypeError
@example(header={"t": {"dtype": "F32", "shape": [1 << 40, 1 << 40, 1 << 40], "data_offsets": [0, 0]}}, declared=None,
         payload=b"")  # int64 overflow in the size product
def test_safetensors_header(tmp_path_factory: pytest.TempPathFactory, header: Any, declared: int | None,
                            payload: bytes) -> None:
    text = json.dumps(header).encode()
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if declared is None else declared) + text + payload)
    try:
        read_safetensors_header(path)
    except UserError:
        pass


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=3), value=json_values)
def test_config_json(fixture_dir: Path, path: list[int], value: Any) -> None:
    checkpoint = open_checkpoint(str(fixture_dir))
    checkpoint.config = mutate(copy.deepcopy(checkpoint.config), path, value)
    try:
        ModernBertSpec.from_checkpoint(checkpoint)
    except UserError:
        pass


@pytest.fixture(scope="module")
def tokenizer_parts(fixture_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    checkpoint = open_checkpoint(str(fixture_dir))
    return checkpoint.tokenizer, checkpoint.special_tokens_map, checkpoint.config


@FUZZ
@given(path=st.lists(st.integers(0, 5000), min_size=1, max_size=4), value=json_values, target=st.integers(0, 2))
def test_tokenizer_json(tokenizer_parts: tuple[dict[str, Any], ...], path: list[int], value: Any, target: int) -> None:
    parts = [copy.deepcopy(part) for part in tokenizer_parts]
    parts[target] = mutate(parts[target], path, value)
    try:
        build_vocab(*parts)
    except UserError:
        pass


HYPERPARAMETERS = ["attention.layer_norm_epsilon", "rope.freq_base", "rope.freq_base_swa", "rope.scaling.factor",
                   "rope.scaling.attn_factor", "block_count", "attention.head_count", "attention.head_count_kv",
                   "attention.key_length", "rope.dimension_count", "attention.sliding_window", "pooling_type",
                   "expert_count", "rope.scaling.type", "hidden_activation"]
hyper_values = st.one_of(
    st.tuples(st.just(GGUFValueType.FLOAT32), st.floats(width=32, allow_nan=True, allow_infinity=True)),
    st.tuples(st.just(GGUFValueType.UINT32), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(GGUFValueType.INT32), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(GGUFValueType.STRING), st.sampled_from(["none", "linear", "yarn", "gelu", "silu", "", "x"])),
)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(HYPERPARAMETERS), hyper_values, min_size=1, max_size=4))
@example(changes={"attention.layer_norm_epsilon": (GGUFValueType.FLOAT32, -1.0)})  # passed check, aborted llama.cpp
@example(changes={"attention.layer_norm_epsilon": (GGUFValueType.FLOAT32, float("nan"))})
def test_gguf_hyperparameters(good_gguf: bytes, tmp_path_factory: pytest.TempPathFactory,
                              changes: dict[str, tuple[GGUFValueType, Any]]) -> None:
    """A file whose modern-bert keys `check` passes meets every assert llama.cpp 0.3.36 makes on them."""
    path = tmp_path_factory.getbasetemp() / "hyper.gguf"
    path.write_bytes(good_gguf)
    header = read_header(path)
    named = {f"modern-bert.{key}": change for key, change in changes.items()}
    rewrite_keys(path, header, [e for e in key_entries(header) if e[0] not in named] +
                 [(key, value_type, value, None) for key, (value_type, value) in named.items()])
    try:
        meta = check_gguf(path).metadata
    except GGUFCheckError:
        return
    arch = {key.removeprefix("modern-bert."): value for key, value in meta.items() if key.startswith("modern-bert.")}
    head = arch["embedding_length"] // arch["attention.head_count"]
    assert math.isfinite(arch["attention.layer_norm_epsilon"]) and arch["attention.layer_norm_epsilon"] > 0
    assert 0 < arch["block_count"] <= 512 and head % 2 == 0
    assert arch.get("rope.scaling.type", "none") in ("none", "linear")
    assert 0 < arch.get("rope.dimension_count", head) <= head and arch.get("rope.dimension_count", head) % 2 == 0
    assert arch.get("attention.head_count_kv", arch["attention.head_count"]) == arch["attention.head_count"]
    assert arch.get("expert_count", 0) == 0 and arch["pooling_type"] in (0, 1, 2, 3)
    for key in ("rope.freq_base", "rope.freq_base_swa", "rope.scaling.attn_factor"):
        assert key not in arch or (math.isfinite(arch[key]) and arch[key] > 0)


manifest_layers = st.lists(st.fixed_dictionaries({
    "mediaType": st.sampled_from([MODEL_MEDIA_TYPE, PARAMS_MEDIA_TYPE, "application/vnd.ollama.image.adapter"]) | json_values,
    "digest": st.sampled_from(["sha256:" + "ab" * 32, "sha256:../x", "md5:0"]) | json_values,
    "size": st.integers(-1, 2**70) | json_values}), max_size=4)


@FUZZ
@given(layers=manifest_layers, config_size=st.integers(-1, 2**70) | json_values,
       media_type=st.sampled_from([MANIFEST_MEDIA_TYPE]) | json_values, junk=st.binary(max_size=64))
@example(layers=[{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:" + "ab" * 32, "size": 10**20}], config_size=2,
         media_type=MANIFEST_MEDIA_TYPE, junk=b"")  # was a MemoryError in pull
def test_registry_manifest(layers: list[dict[str, Any]], config_size: Any, media_type: Any, junk: bytes) -> None:
    """A manifest is refused with a UserError, or every blob it names is of a known kind, a sane digest and size."""
    manifest = {"schemaVersion": 2, "mediaType": media_type, "layers": layers,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + "cd" * 32, "size": config_size}}
    for body in (json.dumps(manifest).encode(), junk, json.dumps(manifest).encode()[: len(junk)]):
        try:
            entries = registry.parse_manifest(body, "h:1/a/b:c")
        except UserError:
            continue
        for entry in entries:
            blob_file_name(entry["digest"])
            limit = registry.MAX_MODEL_LAYER_BYTES if entry["mediaType"] == MODEL_MEDIA_TYPE else registry.MAX_OTHER_LAYER_BYTES
            assert isinstance(entry["size"], int) and 0 <= entry["size"] <= limit


MODELFILE_WORDS = ["FROM", "from", "PARAMETER", "num_ctx", "num_batch", "LICENSE", "TEMPLATE", "SYSTEM", "ADAPTER",
                   "MESSAGE", "#", '"', '"""', "'", "\n", " ", "\t", "8192", "-1", "x.gguf", "\\", "=", "stop", "\r"]


@FUZZ
@given(pieces=st.lists(st.sampled_from(MODELFILE_WORDS) | st.text(max_size=6), max_size=40))
def test_modelfile(pieces: list[str]) -> None:
    problems = check_modelfile(" ".join(pieces))
    assert all(problem.line >= 1 and problem.message for problem in problems)


@FUZZ
@given(pieces=st.lists(st.sampled_from(list("ab09_-.:/\\~ \x00é") + ["..", "//", "registry.ollama.ai/"]), max_size=20))
def test_ollama_name(tmp_path_factory: pytest.TempPathFactory, pieces: list[str]) -> None:
    text = "".join(pieces)
    root = tmp_path_factory.getbasetemp() / "store"
    try:
        name = ModelName.parse(text)
    except UserError:
        return
    resolved = manifest_file_path(root, name).resolve()
    assert resolved.is_relative_to(root.resolve()), f"{text!r} escapes the store: {resolved}"


@pytest.fixture(scope="module")
def service(fixture_dir: Path, good_gguf: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingService]:
    path = tmp_path_factory.mktemp("fuzz-serve") / "m.gguf"
    path.write_bytes(good_gguf)
    batcher = Batcher([Embedder(path, max_tokens=256)])
    try:
        yield EmbeddingService([ServedModel("m", batcher)])
    finally:
        batcher.close()


SERVER_FIELDS = ["input", "prompt", "dimensions", "encoding_format", "truncate", "model", "options", "content",
                 "embd_normalize"]
SERVER_VALUES = (json_values | st.lists(st.text(max_size=30), max_size=3) | st.integers(-5, 100)
                 | st.lists(st.integers(-3, 300), max_size=4) | st.sampled_from(["m", "m:latest", "M", {"num_ctx": 3}])
                 | st.fixed_dictionaries({"content": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                                                     "text": st.text(max_size=8)}), max_size=2)}))


@FUZZ
@given(body=st.dictionaries(st.sampled_from(SERVER_FIELDS), SERVER_VALUES, max_size=6), route=st.integers(0, 2))
@example(body={"input": "x", "dimensions": 64}, route=0)
@example(body={"model": "m", "input": ["a", "\ud800"], "truncate": False}, route=1)
@example(body={"model": "m", "input": "a b c d e f", "options": {"num_ctx": 3}}, route=1)
@example(body={"input": [[1, 2], [299]], "dimensions": 20}, route=0)
def test_server_request_bodies(service: EmbeddingService, body: dict[str, Any], route: int) -> None:
    handler = [service.openai_embeddings, service.ollama_embed, service.ollama_embeddings][route]
    try:
        answer = asyncio.run(handler(body))
    except RequestError as exc:
        assert 400 <= exc.status < 500 and str(exc)
        return
    json.dumps(answer, allow_nan=False)  # the answer must serialize, with no bare NaN


@FUZZ
@given(raw=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
@example(raw=b"[" * 100_000 + b"]" * 100_000)  # issue 21 item 14: was a 500 (RecursionError)
@example(raw=b'{"input": "x", "dimensions": ' + b"9" * 1_000_000 + b"}")  # a 1M-digit number: was a 500
@example(raw=b'{"a": ' * 100_000 + b"1" + b"}" * 100_000)
def test_server_json_bodies(raw: bytes) -> None:
    try:
        body = parse_json_object(raw)
    except RequestError as exc:
        assert exc.status == 400 and str(exc)
        return
    assert isinstance(body, dict)
