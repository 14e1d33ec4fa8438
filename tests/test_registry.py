"""`push`/`pull` against real registries on loopback, started by scripts/start-registry.sh: Debian's docker-registry
(the CNCF distribution registry) redirecting blob GETs to Debian's nginx, and the same registry without the redirect.
`OllamaPull` (tests/ollama_pull.py) is ollama's pull algorithm, so the tests show what `ollama pull` does with each
registry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from granite_gguf.cli import main
from granite_gguf.errors import UserError
from granite_gguf.modelfiles import registry
from granite_gguf.modelfiles.registry import pull, push
from granite_gguf.modelfiles.store import MANIFEST_MEDIA_TYPE, install, list_models
from tests.helpers import Workspace, free_port, tree
from tests.ollama_pull import OllamaError, OllamaPull
from tests.services import start_registry

pytestmark = [pytest.mark.slow, pytest.mark.registry]

NAME = "tiny-gemma3:q8_0"
MANIFEST = "manifests/registry.ollama.ai/library/tiny-gemma3/q8_0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The redirecting registry: docker-registry on 127.0.0.1, its blobs served by nginx on 127.0.0.2."""
    yield from start_registry(tmp_path_factory)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """docker-registry alone, answering blob GETs with 200 and the content, as it does by default."""
    yield from start_registry(tmp_path_factory, "--no-redirect")


@pytest.fixture(scope="module")
def store_a(workspace: Workspace, server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Store A with the tiny model installed and pushed as <server>/test/tiny:q8_0."""
    root = tmp_path_factory.mktemp("store-a")
    install(workspace.gguf("tiny-gemma3", "q8_0"), NAME, root)
    push(NAME, f"{server[0]}/test/tiny:q8_0", root, insecure=True)
    return root


@pytest.fixture
def requests_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, url, headers) that registry.py sends."""
    log: list[tuple[str, str, dict[str, Any]]] = []
    original = requests.Session.request

    def logged(self: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
        log.append((method, url, dict(kwargs.get("headers") or {})))
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", logged)
    return log


def blobs(root: Path) -> dict[str, bytes]:
    return {path: data for path, data in tree(root).items() if path.startswith("blobs/")}


def entries(root: Path) -> list[dict[str, Any]]:
    manifest = json.loads((root / MANIFEST).read_bytes())
    return [manifest["config"], *manifest["layers"]]


def expected_tree(store: Path, host: str) -> dict[str, bytes]:
    """The store a pull of <host>/test/tiny:q8_0 into an empty folder must produce: store A's blobs and manifest."""
    return {**blobs(store), f"manifests/{host}/test/tiny/q8_0": (store / MANIFEST).read_bytes()}


def blob_file_urls(log: list[tuple[str, str, dict[str, Any]]], host: str) -> list[str]:
    """The URLs of ranged GETs: each must be a blob file on nginx, known only from the registry's Location."""
    urls = [url for method, url, headers in log if method == "GET" and "Range" in headers]
    blob_file = re.compile(r"http://127\.0\.0\.2:[0-9]+/docker/registry/v2/blobs/sha256/[0-9a-f]{2}/[0-9a-f]{64}/data")
    assert urls and all(blob_file.fullmatch(url) for url in urls), urls
    assert not any(url.startswith(f"http://{host}/") and "Range" in headers for _, url, headers in log)
    return urls


def test_ollama_algorithm_pulls_from_the_redirecting_registry(
        server: tuple[str, Path], store_a: Path, tmp_path: Path,
        requests_log: list[tuple[str, str, dict[str, Any]]]) -> None:
    client = OllamaPull(tmp_path)
    client.pull(server[0], "test", "tiny", "q8_0")
    assert tree(tmp_path) == expected_tree(store_a, server[0])
    assert len(blob_file_urls(requests_log, server[0])) == len(entries(store_a))  # one 100 MB part per small blob
    registry_blob_gets = [url for method, url, _ in requests_log if method == "GET" and f"{server[0]}/v2/" in url]
    assert len(registry_blob_gets) == 1 + len(entries(store_a))  # the manifest, then one GET per blob for its URL


def test_ollama_algorithm_in_parallel_parts(server: tuple[str, Path], store_a: Path, tmp_path: Path) -> None:
    client = OllamaPull(tmp_path, min_part_size=64 << 10)
    client.pull(server[0], "test", "tiny", "q8_0")
    assert tree(tmp_path) == expected_tree(store_a, server[0])
    model = max(entries(store_a), key=lambda entry: entry["size"])
    assert len(client.ranges) >= model["size"] // (64 << 10) and f"bytes=0-{(64 << 10) - 1}" in client.ranges


def test_ollama_algorithm_fails_on_the_plain_registry(plain_server: tuple[str, Path], store_a: Path,
                                                      tmp_path: Path) -> None:
    """What `ollama pull` prints against a default registry: "Error: http: no Location header in response"
    (reported in github.com/oras-project/oras-go issue 882 and ollama pull request 9737, both with distribution)."""
    push(NAME, f"{plain_server[0]}/test/tiny:q8_0", store_a, insecure=True)
    with pytest.raises(OllamaError) as failure:
        OllamaPull(tmp_path).pull(plain_server[0], "test", "tiny", "q8_0")
    assert str(failure.value) == "http: no Location header in response"
    assert not (tmp_path / "manifests").exists()
    assert all("-partial" in path for path in tree(tmp_path))


def test_pull_follows_the_redirect_in_ranged_parts(server: tuple[str, Path], store_a: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   requests_log: list[tuple[str, str, dict[str, Any]]]) -> None:
    monkeypatch.setattr(registry, "MIN_PART", 64 << 10)  # several parts of the model blob
    store_b = tmp_path / "b"
    pull(f"{server[0]}/test/tiny:q8_0", store_b, insecure=True)
    assert tree(store_b) == expected_tree(store_a, server[0])
    assert [model.name for model in list_models(store_b)] == [f"{server[0]}/test/tiny:q8_0"]
    manifest_get = requests_log[0]
    assert manifest_get[0] == "GET" and manifest_get[2]["Accept"] == MANIFEST_MEDIA_TYPE
    blob_file_urls(requests_log, server[0])
    ranges = [headers["Range"] for _, _, headers in requests_log if "Range" in headers]
    largest = max(entry["size"] for entry in entries(store_a))
    assert len(ranges) >= largest // (64 << 10)
    assert f"bytes=0-{(64 << 10) - 1}" in ranges


def test_pull_refuses_the_plain_registry_as_ollama_does(plain_server: tuple[str, Path], store_a: Path,
                                                        tmp_path: Path) -> None:
    push(NAME, f"{plain_server[0]}/test/tiny:q8_0", store_a, insecure=True)
    with pytest.raises(UserError, match="without a Location header; `ollama pull` fails on it too \\('http: no Location header in response'\\)"):
        pull(f"{plain_server[0]}/test/tiny:q8_0", tmp_path, insecure=True)
    assert not (tmp_path / "manifests").exists()


def test_scheme_prefix_is_dropped_and_http_needs_insecure(server: tuple[str, Path], store_a: Path,
                                                          tmp_path: Path) -> None:
    """ollama's ParseName keeps the scheme apart from the name; PullModel refuses http without --insecure."""
    with pytest.raises(UserError, match="insecure protocol http"):
        pull(f"http://{server[0]}/test/tiny:q8_0", tmp_path, insecure=False)
    pull(f"http://{server[0]}/test/tiny:q8_0", tmp_path, insecure=True)
    assert tree(tmp_path) == expected_tree(store_a, server[0])


def test_pull_under_another_name(server: tuple[str, Path], store_a: Path, tmp_path: Path) -> None:
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert tree(tmp_path) == tree(store_a)


def test_push_twice_uploads_no_blob(server: tuple[str, Path], store_a: Path,
                                    requests_log: list[tuple[str, str, dict[str, Any]]]) -> None:
    push(NAME, f"{server[0]}/test/tiny:q8_0", store_a, insecure=True)
    methods = [method for method, _, _ in requests_log]
    assert methods == ["HEAD"] * len(entries(store_a)) + ["PUT"]
    assert requests_log[-1][1].endswith("/v2/test/tiny/manifests/q8_0")


def test_missing_tag_leaves_the_store_unchanged(server: tuple[str, Path], store_a: Path, tmp_path: Path) -> None:
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True)
    before = tree(tmp_path)
    with pytest.raises(UserError, match="not found"):
        pull(f"{server[0]}/test/tiny:missing", tmp_path, insecure=True)
    with pytest.raises(UserError, match="not found"):
        pull(f"{server[0]}/test/absent:q8_0", tmp_path / "empty", insecure=True)
    assert tree(tmp_path) == before


def test_connection_refused_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="connection refused"):
        pull(f"127.0.0.1:{free_port()}/test/tiny:q8_0", tmp_path, insecure=True)
    assert not tmp_path.joinpath("manifests").exists()


def test_pull_resumes_the_parts_ollama_left(server: tuple[str, Path], store_a: Path, tmp_path: Path,
                                            requests_log: list[tuple[str, str, dict[str, Any]]]) -> None:
    """An interrupted `ollama pull` leaves `<blob>-partial` and its part records; pull asks only for what is missing."""
    model = max(entries(store_a), key=lambda entry: entry["size"])
    name = model["digest"].replace(":", "-")
    data = (store_a / "blobs" / name).read_bytes()
    half = len(data) // 2
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / f"{name}-partial").write_bytes(data[:half] + data[half:half + 1000] + bytes(len(data) - half - 1000))
    for n, (offset, size, completed) in enumerate([(0, half, half), (half, len(data) - half, 1000)]):
        OllamaPull.write_part(tmp_path / "blobs" / name, {"N": n, "Offset": offset, "Size": size, "Completed": completed})
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert tree(tmp_path) == tree(store_a)
    assert [headers["Range"] for _, url, headers in requests_log if "Range" in headers and name[7:] in url] == [
        f"bytes={half + 1000}-{len(data) - 1}"]


def test_an_interrupted_pull_resumes_where_it_stopped(server: tuple[str, Path], store_a: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the third ranged GET: the parts stop, their records stay; the next pull asks only for the rest."""
    monkeypatch.setattr(registry, "MIN_PART", 64 << 10)
    model = max(entries(store_a), key=lambda entry: entry["size"])
    ranged: list[str] = []
    original = requests.Session.request

    def interrupted(self: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
        if "Range" in (kwargs.get("headers") or {}) and model["digest"][7:] in url:
            ranged.append(kwargs["headers"]["Range"])
            if len(ranged) == 3:
                raise KeyboardInterrupt
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert not (tmp_path / "manifests").exists()
    first = len(ranged)
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert tree(tmp_path) == tree(store_a)
    resumed = [tuple(map(int, r.removeprefix("bytes=").split("-"))) for r in ranged[first:]]
    assert 0 < sum(stop + 1 - start for start, stop in resumed) < model["size"]


def test_a_wrong_partial_is_downloaded_again(server: tuple[str, Path], store_a: Path, tmp_path: Path) -> None:
    model = max(entries(store_a), key=lambda entry: entry["size"])
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / (model["digest"].replace(":", "-") + "-partial")).write_bytes(b"\0" * 1000)
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert tree(tmp_path) == tree(store_a)


def test_corrupted_blob_on_the_server_is_refused(server: tuple[str, Path], store_a: Path, tmp_path: Path) -> None:
    """Flip a byte of a layer in the registry's own storage: the pull must fail and write nothing under final names."""
    layer = min(entries(store_a)[1:], key=lambda entry: entry["size"])
    hex_digest = layer["digest"].split(":")[1]
    data_file = server[1] / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    original = data_file.read_bytes()
    data_file.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    try:
        with pytest.raises(UserError, match="does not match its digest"):
            pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True)
    finally:
        data_file.write_bytes(original)
    assert not tmp_path.joinpath("manifests").exists()
    assert not any(path.startswith(f"blobs/sha256-{hex_digest}") for path in tree(tmp_path))


def test_manifest_digests_are_checked_before_use() -> None:
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"digest": "sha256:../../../etc/passwd", "size": 1}, "layers": []}
    with pytest.raises(UserError, match="invalid blob digest"):
        registry.parse_manifest(json.dumps(manifest).encode(), "h:1/a/b:c")


def test_push_of_a_missing_model_and_a_bad_target(store_a: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        push("absent:latest", "127.0.0.1:1/test/x:y", store_a, insecure=True)
    with pytest.raises(UserError, match="host"):
        push(NAME, "test/tiny:q8_0", store_a, insecure=True)


def test_commands(server: tuple[str, Path], store_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"{server[0]}/test/cli:v1"
    assert main(["push", NAME, target, "--insecure", "--models-dir", str(store_a)]) == 0
    assert main(["pull", target, "--insecure", "--models-dir", str(tmp_path), "--name", NAME]) == 0
    assert tree(tmp_path) == tree(store_a)
    assert capsys.readouterr().out.splitlines() == [f"pushed {NAME} to {target}", f"pulled {target} as {NAME}"]
