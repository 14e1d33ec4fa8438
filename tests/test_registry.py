"""`push`/`pull` against real registries on loopback, started by scripts/start-registry.sh: Debian's docker-registry
(the CNCF distribution registry) redirecting blob GETs to Debian's nginx, and the same registry without the redirect.
`OllamaPull` below is ollama's pull algorithm, so the tests show what `ollama pull` does with each registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from granite_gguf.cli import main
from granite_gguf.errors import UserError
from granite_gguf.modelfiles import registry
from granite_gguf.modelfiles.registry import pull, push
from granite_gguf.modelfiles.store import MANIFEST_MEDIA_TYPE, install, list_models
from tests.helpers import Workspace, free_port, tree
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


class OllamaError(Exception):
    """An error ollama's pull returns; its text is what `ollama pull` prints after "Error: "."""


USE_LAST_RESPONSE = "net/http: use last response"  # Go's http.ErrUseLastResponse


def go_client_do(method: str, url: str, headers: dict[str, str] | None = None,
                 check_redirect: Callable[[str, list[str]], str | None] | None = None) -> requests.Response:
    """Go's http.Client.Do: follows 301/302/303/307/308 that carry a Location, asking `check_redirect(next, via)`
    first (None: follow; USE_LAST_RESPONSE: return this response; other text: fail); without one, Go's default
    stops after 10 redirects. Headers go along on every hop; 301-303 turn methods other than GET/HEAD into GET."""
    via: list[str] = []
    while True:
        response = requests.request(method, url, headers=headers, allow_redirects=False, stream=True, timeout=60)
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            return response
        next_url = urljoin(url, location)
        via.append(url)
        verdict = check_redirect(next_url, via) if check_redirect else (
            "stopped after 10 redirects" if len(via) >= 10 else None)
        if verdict == USE_LAST_RESPONSE:
            return response
        response.close()
        if verdict is not None:
            raise OllamaError(f'{method.title()} "{next_url}": {verdict}')
        if response.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):
            method = "GET"
        url = next_url


def ollama_request(method: str, url: str, headers: dict[str, str] | None = None,
                   check_redirect: Callable[[str, list[str]], str | None] | None = None) -> requests.Response:
    """server/images.go makeRequestWithRetry (no auth here: a 401 is an error): 404 is os.ErrNotExist, any other
    status >= 400 "<status>: <body>", everything else is returned."""
    response = go_client_do(method, url, headers, check_redirect)
    if response.status_code == 401:
        raise OllamaError("unauthorized: access denied")
    if response.status_code == 404:
        raise OllamaError("file does not exist")
    if response.status_code >= 400:
        raise OllamaError(f"{response.status_code}: {response.text}")
    return response


class OllamaPull:
    """`ollama pull --insecure host:port/ns/model:tag` for a GGUF model, translated from github.com/ollama/ollama at
    fb30760 (2026-08-21) — the algorithm, not this project's code:

    server/images.go: PullModel (manifest, then each layer and the config with downloadBlob; a blob already on disk
    is a cache hit and is not verified; the others verifyBlob: sha256, on mismatch the file is removed; manifest
    written last), pullModelManifest (GET with Accept: application/vnd.docker.distribution.manifest.v2+json),
    makeRequest (--insecure: http).
    server/download.go: downloadBlob; blobDownload.Prepare (HEAD the blob, default redirects, Content-Length is the
    total; parts of total/16 clamped to [100 MB, 1000 MB], each recorded by newPart/writePart in
    `<blob>-partial-N` as {"N","Offset","Size","Completed"}), blobDownload.run (`<blob>-partial` truncated to the
    total; the direct URL from a GET whose CheckRedirect follows a redirect only to the same host name, at most 10,
    and otherwise returns that response; the status must be 307 or 200 ("unexpected status code %d"), then
    resp.Location() — Go's ErrNoLocation "http: no Location header in response" when there is none; up to 16 parts
    at once; part records removed and `-partial` renamed), blobDownload.downloadChunk (GET the direct URL with
    Range: bytes=<start>-<stop-1> through http.DefaultClient, copy exactly the part's remaining bytes, no status
    check). Left out: retries and stall detection, progress, auth, the safetensors transfer path.
    """

    NUM_PARTS, MIN_PART_SIZE, MAX_PART_SIZE = 16, 100 * 1000 * 1000, 1000 * 1000 * 1000

    def __init__(self, models: Path, min_part_size: int = MIN_PART_SIZE) -> None:
        self.models = models
        self.min_part_size = min_part_size  # a test lowers it to make several parts of a small blob
        self.ranges: list[str] = []

    def pull(self, host: str, namespace: str, model: str, tag: str) -> None:
        base = f"http://{host}/v2/{namespace}/{model}"
        try:
            response = ollama_request("GET", f"{base}/manifests/{tag}",
                                      {"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            data = response.content
            manifest = json.loads(data)
        except (OllamaError, ValueError) as exc:
            raise OllamaError(f"pull model manifest: {exc}") from None
        layers = [*manifest["layers"], *([manifest["config"]] if manifest["config"].get("digest") else [])]
        skip_verify: dict[str, bool] = {}
        for layer in layers:
            cache_hit = self.download_blob(f"{base}/blobs/{layer['digest']}", layer["digest"])
            skip_verify[layer["digest"]] = skip_verify.get(layer["digest"], True) and cache_hit
        for layer in layers:
            if not skip_verify[layer["digest"]]:
                self.verify_blob(layer["digest"])
        path = self.models / "manifests" / host / namespace / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def blob_path(self, digest: str) -> Path:
        return self.models / "blobs" / digest.replace(":", "-")

    def download_blob(self, request_url: str, digest: str) -> bool:
        name = self.blob_path(digest)
        if name.exists():
            return True
        name.parent.mkdir(parents=True, exist_ok=True)
        parts = [json.loads(path.read_text()) for path in sorted(name.parent.glob(f"{name.name}-partial-*"))]
        if not parts:
            with ollama_request("HEAD", request_url) as head:
                total = int(head.headers.get("Content-Length", "0"))
            size = min(max(total // self.NUM_PARTS, self.min_part_size), self.MAX_PART_SIZE)
            for offset in range(0, total, size):
                parts.append({"N": len(parts), "Offset": offset, "Size": min(size, total - offset), "Completed": 0})
                self.write_part(name, parts[-1])
        total = sum(part["Size"] for part in parts)
        partial = name.with_name(name.name + "-partial")
        with partial.open("r+b" if partial.exists() else "w+b") as file:
            file.truncate(total)
            direct_url = self.direct_url(request_url)
            with ThreadPoolExecutor(self.NUM_PARTS) as group:
                for future in [group.submit(self.download_chunk, direct_url, file.fileno(), name, part)
                               for part in parts if part["Completed"] != part["Size"]]:
                    future.result()
        for part in parts:
            name.with_name(f"{name.name}-partial-{part['N']}").unlink()
        partial.rename(name)
        return False

    @staticmethod
    def direct_url(request_url: str) -> str:
        hostname = urlsplit(request_url).hostname

        def check_redirect(next_url: str, via: list[str]) -> str | None:
            if len(via) > 10:
                return "maximum redirects exceeded (10) for directURL"
            return None if urlsplit(next_url).hostname == hostname else USE_LAST_RESPONSE

        with ollama_request("GET", request_url, check_redirect=check_redirect) as response:
            if response.status_code not in (307, 200):
                raise OllamaError(f"unexpected status code {response.status_code}")
            location = response.headers.get("Location")
            if not location:
                raise OllamaError("http: no Location header in response")
            return urljoin(response.url, location)

    def download_chunk(self, direct_url: str, fd: int, name: Path, part: dict[str, int]) -> None:
        start, stop = part["Offset"] + part["Completed"], part["Offset"] + part["Size"]
        self.ranges.append(f"bytes={start}-{stop - 1}")
        with go_client_do("GET", direct_url, {"Range": f"bytes={start}-{stop - 1}"}) as response:
            for piece in response.iter_content(1 << 16):
                piece = piece[: stop - start]
                os.pwrite(fd, piece, start)
                start += len(piece)
                if start == stop:
                    break
        part["Completed"] = start - part["Offset"]
        self.write_part(name, part)
        if start < stop:
            raise OllamaError("unexpected EOF")

    @staticmethod
    def write_part(name: Path, part: dict[str, int]) -> None:
        name.with_name(f"{name.name}-partial-{part['N']}").write_text(json.dumps(part, separators=(",", ":")) + "\n")

    def verify_blob(self, digest: str) -> None:
        path = self.blob_path(digest)
        actual = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
        if actual != digest:
            path.unlink()
            raise OllamaError(f"digest mismatch, file must be downloaded again: want {digest}, got {actual}")


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
        registry._manifest_entries(json.dumps(manifest).encode(), "h:1/a/b:c")


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
