"""A reference client: ollama's pull algorithm (`OllamaPull`), translated from Go, and Go's http.Client redirect rules,
so tests/test_registry.py can show what `ollama pull` does with a registry without running ollama."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests


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
