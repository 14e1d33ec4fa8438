"""`push`/`pull` against a real CNCF distribution registry (Debian's docker-registry) on loopback."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from granite_gguf.errors import UserError
from granite_gguf.modelfiles import registry
from granite_gguf.modelfiles.registry import add_registry_commands, pull, push
from granite_gguf.modelfiles.store import MANIFEST_MEDIA_TYPE, install, list_models
from tests.conftest import Workspace, free_port, tree

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "start-registry.sh"
NAME = "tiny-gemma3:q8_0"
MANIFEST = "manifests/registry.ollama.ai/library/tiny-gemma3/q8_0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(host:port, storage folder) of a registry started by scripts/start-registry.sh."""
    if shutil.which("docker-registry") is None:
        pytest.fail("the docker-registry binary is missing: .ci/run must install it (apt-get install -y docker-registry)")
    data = tmp_path_factory.mktemp("registry")
    port = free_port()
    started = subprocess.run([str(SCRIPT), str(port), str(data)], check=False, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split()[-1])
    try:
        yield f"127.0.0.1:{port}", data / "storage"
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


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


@pytest.mark.slow
@pytest.mark.registry
def test_round_trip_into_an_empty_store(server: tuple[str, Path], store_a: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        requests_log: list[tuple[str, str, dict[str, Any]]]) -> None:
    monkeypatch.setattr(registry, "CHUNK", 64 << 10)  # several Range requests for the model blob
    store_b = tmp_path / "b"
    pull(f"{server[0]}/test/tiny:q8_0", store_b, insecure=True)
    assert tree(store_b) == {**blobs(store_a), f"manifests/{server[0]}/test/tiny/q8_0": (store_a / MANIFEST).read_bytes()}
    assert [model.name for model in list_models(store_b)] == [f"{server[0]}/test/tiny:q8_0"]
    manifest_get = requests_log[0]
    assert manifest_get[0] == "GET" and manifest_get[2]["Accept"] == MANIFEST_MEDIA_TYPE
    ranges = [headers["Range"] for method, _, headers in requests_log if "Range" in headers]
    largest = max(entry["size"] for entry in entries(store_a))
    assert len(ranges) >= largest // (64 << 10)
    assert f"bytes=0-{(64 << 10) - 1}" in ranges


@pytest.mark.slow
@pytest.mark.registry
def test_pull_under_another_name(server: tuple[str, Path], store_a: Path, tmp_path: Path) -> None:
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert tree(tmp_path) == tree(store_a)


@pytest.mark.slow
@pytest.mark.registry
def test_push_twice_uploads_no_blob(server: tuple[str, Path], store_a: Path,
                                    requests_log: list[tuple[str, str, dict[str, Any]]]) -> None:
    push(NAME, f"{server[0]}/test/tiny:q8_0", store_a, insecure=True)
    methods = [method for method, _, _ in requests_log]
    assert methods == ["HEAD"] * len(entries(store_a)) + ["PUT"]
    assert requests_log[-1][1].endswith("/v2/test/tiny/manifests/q8_0")


@pytest.mark.slow
@pytest.mark.registry
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


@pytest.mark.slow
@pytest.mark.registry
def test_pull_resumes_a_partial_blob(server: tuple[str, Path], store_a: Path, tmp_path: Path,
                                     requests_log: list[tuple[str, str, dict[str, Any]]]) -> None:
    model = max(entries(store_a), key=lambda entry: entry["size"])
    name = model["digest"].replace(":", "-")
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / f"{name}-partial").write_bytes((store_a / "blobs" / name).read_bytes()[:100_000])
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert tree(tmp_path) == tree(store_a)
    model_ranges = [headers["Range"] for _, url, headers in requests_log if url.endswith(model["digest"])]
    assert model_ranges == [f"bytes=100000-{model['size'] - 1}"]


@pytest.mark.slow
@pytest.mark.registry
def test_a_wrong_partial_is_downloaded_again(server: tuple[str, Path], store_a: Path, tmp_path: Path) -> None:
    model = max(entries(store_a), key=lambda entry: entry["size"])
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / (model["digest"].replace(":", "-") + "-partial")).write_bytes(b"\0" * 1000)
    pull(f"{server[0]}/test/tiny:q8_0", tmp_path, insecure=True, name=NAME)
    assert tree(tmp_path) == tree(store_a)


@pytest.mark.slow
@pytest.mark.registry
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


@pytest.mark.slow
@pytest.mark.registry
def test_push_of_a_missing_model_and_a_bad_target(store_a: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        push("absent:latest", "127.0.0.1:1/test/x:y", store_a, insecure=True)
    with pytest.raises(UserError, match="host"):
        push(NAME, "test/tiny:q8_0", store_a, insecure=True)


@pytest.mark.slow
@pytest.mark.registry
def test_commands(server: tuple[str, Path], store_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    target = f"{server[0]}/test/cli:v1"
    args = parser.parse_args(["push", NAME, target, "--insecure", "--models-dir", str(store_a)])
    assert args.run(args) == 0
    args = parser.parse_args(["pull", target, "--insecure", "--models-dir", str(tmp_path), "--name", NAME])
    assert args.run(args) == 0
    assert tree(tmp_path) == tree(store_a)
    assert capsys.readouterr().out.splitlines() == [f"pushed {NAME} to {target}", f"pulled {target} as {NAME}"]
