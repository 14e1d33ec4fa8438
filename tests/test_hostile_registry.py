"""`pull` from a hostile registry (issue 21, items 2-5): a stub on loopback serves endless or huge manifests, absurd
layer sizes, a blob one byte at a time, and layers that are not what their media type says. Each is refused with one
line, in bounded time and memory, and nothing unchecked enters the store."""

from __future__ import annotations

import errno
import hashlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from granite_gguf.errors import UserError
from granite_gguf.modelfiles import registry
from granite_gguf.modelfiles.registry import pull
from granite_gguf.modelfiles.store import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, MODEL_MEDIA_TYPE, list_models
from tests.helpers import Workspace, cli_command, tree
from tests.test_hostile_check import F32, with_keys

DEADLINE = 60  # seconds any one pull here may take; the stub's own sockets time out too


@dataclass
class Stub:
    """What the stub serves: manifest bodies by tag ("endless" streams forever), blobs by digest, how slowly."""

    manifests: dict[str, bytes | str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    seconds_per_byte: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


def handler_for(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 30

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            try:
                self.answer()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def answer(self) -> None:
            parts = self.path.split("/")
            if "manifests" in parts:
                body = stub.manifests.get(parts[-1])
                if body is None:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Type", MANIFEST_MEDIA_TYPE)
                if body == "endless":
                    self.end_headers()
                    chunk = b" " * (1 << 20)
                    while not stub.stop.is_set():  # until the client hangs up
                        self.wfile.write(chunk)
                    return None
                assert isinstance(body, bytes)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None
            if "blobs" in parts:  # ollama's rule: a redirect to where the bytes are, on another host name
                self.send_response(307)
                port = self.server.server_address[1]  # type: ignore[index]  # an (address, port) pair for AF_INET
                self.send_header("Location", f"http://localhost:{port}/data/{parts[-1]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            data = stub.blobs.get(parts[-1])
            if data is None:
                return self.send_error(404)
            start, end = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
            piece = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Length", str(len(piece)))
            self.end_headers()
            if not stub.seconds_per_byte:
                self.wfile.write(piece)
                return None
            for byte in piece:
                if stub.stop.is_set():
                    return None
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(stub.seconds_per_byte)
            return None

    return Handler


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    """(what to serve, host:port) of a stub registry on 127.0.0.1, stopped after the test."""
    served = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(served))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"127.0.0.1:{server.server_address[1]}"
    finally:
        served.stop.set()
        server.shutdown()
        server.server_close()


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


CONFIG = b'{"model_format":"gguf"}'


def serve_model(stub: Stub, model: bytes, *, config: bytes = CONFIG, tag: str = "t",
                extra_layers: list[dict[str, Any]] | None = None, model_size: int | None = None) -> None:
    """A manifest under `tag` naming `config` and `model` (declared `model_size`), their bytes served."""
    stub.blobs.update({digest(config): config, digest(model): model})
    layers = [{"mediaType": MODEL_MEDIA_TYPE, "digest": digest(model), "size": len(model) if model_size is None else model_size}]
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest(config), "size": len(config)},
                "layers": layers + (extra_layers or [])}
    stub.manifests[tag] = json.dumps(manifest).encode()


@pytest.fixture(scope="module")
def model(workspace: Workspace) -> bytes:
    return workspace.gguf("tiny-gemma3", "q8_0").read_bytes()


def timed_pull(host: str, store: Path, tag: str = "t") -> float:
    started = time.monotonic()
    try:
        pull(f"{host}/ns/m:{tag}", store, insecure=True)
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < DEADLINE
    return elapsed


def stored_files(store: Path) -> list[str]:
    return sorted(tree(store))


def refused(host: str, store: Path, message: str) -> None:
    """The pull fails with `message`, in time, and the store holds no file."""
    with pytest.raises(UserError, match=message):
        timed_pull(host, store)
    assert stored_files(store) == []


def test_a_sane_model_is_pulled(stub: tuple[Stub, str], model: bytes, tmp_path: Path) -> None:
    served, host = stub
    serve_model(served, model)
    timed_pull(host, tmp_path)
    assert [m.name for m in list_models(tmp_path)] == [f"{host}/ns/m:t"]


def test_an_endless_manifest_is_cut_at_the_limit(stub: tuple[Stub, str], tmp_path: Path) -> None:
    """Item 3: an endless body reached MemoryError at 2.4 GB."""
    served, host = stub
    served.manifests["t"] = "endless"
    refused(host, tmp_path, f"manifest exceeds the limit of {registry.MAX_MANIFEST_BYTES} bytes")


def test_a_large_manifest_is_refused_by_its_length(stub: tuple[Stub, str], tmp_path: Path) -> None:
    """Item 3: a 100 MB manifest was pulled into the store."""
    served, host = stub
    served.manifests["t"] = b"{" + b" " * (registry.MAX_MANIFEST_BYTES + 1) + b"}"
    refused(host, tmp_path, "manifest of 4194304 bytes|exceeds the limit of 4194304")


@pytest.mark.parametrize("size", [10**20, 17 * 10**12, 18 * 10**12])
def test_absurd_layer_sizes_are_refused_before_any_file(stub: tuple[Stub, str], model: bytes, tmp_path: Path,
                                                        size: int) -> None:
    """Item 2: 10^20 bytes was a MemoryError; 1.7e13 made 17,000 part files and range requests; 1.8e13 ended in
    `OSError: File too large` with 18,000 files left."""
    served, host = stub
    serve_model(served, model, model_size=size)
    refused(host, tmp_path, f"blob of {size} bytes exceeds the limit of {registry.MAX_MODEL_LAYER_BYTES}")


def test_a_layer_larger_than_the_free_space_is_refused(stub: tuple[Stub, str], model: bytes, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    served, host = stub
    serve_model(served, model)
    monkeypatch.setattr(registry.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    refused(host, tmp_path, r"bytes to download, 1000 free")


def test_a_write_the_file_system_refuses_leaves_no_part_files(stub: tuple[Stub, str], model: bytes, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 2: `OSError: File too large` was a traceback that left thousands of part files behind."""
    served, host = stub
    serve_model(served, model)

    def too_large(*args: Any) -> None:
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(registry, "ThreadPoolExecutor", too_large)  # after the part records and the truncate
    with pytest.raises(UserError, match=r"-partial: cannot write \(File too large\)"):
        timed_pull(host, tmp_path)
    assert [name for name in stored_files(tmp_path) if "partial" in name] == []
    assert not list_models(tmp_path)


def test_a_blob_sent_a_byte_at_a_time_is_abandoned(stub: tuple[Stub, str], model: bytes, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 4: one byte at a time held `pull` for over 10 minutes (the timeout was per read)."""
    served, host = stub
    serve_model(served, model)
    served.seconds_per_byte = 0.01
    monkeypatch.setattr(registry, "RATE_WINDOW", 1.0)
    with pytest.raises(UserError, match="bytes/s, below the minimum"):
        elapsed = timed_pull(host, tmp_path)
        assert elapsed < 10
    assert not [m for m in list_models(tmp_path)]


def test_sigterm_ends_a_pull_from_a_slow_registry(stub: tuple[Stub, str], model: bytes, tmp_path: Path) -> None:
    """Item 4: the pull ignored SIGTERM and Ctrl-C while the parts were read."""
    served, host = stub
    serve_model(served, model)
    served.seconds_per_byte = 0.01
    process = subprocess.Popen(cli_command("pull", f"{host}/ns/m:t", "--insecure", "--models-dir", str(tmp_path)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("blobs/*-partial")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 130 and err.strip().endswith("error: interrupted"), err
    assert not list_models(tmp_path)


def not_json_config(stub: Stub, model: bytes) -> None:
    serve_model(stub, model, config=b"\x00not json")


def unknown_layer(stub: Stub, model: bytes) -> None:
    stub.blobs[digest(b"x")] = b"x"
    serve_model(stub, model, extra_layers=[{"mediaType": "application/vnd.ollama.image.adapter", "digest": digest(b"x"),
                                            "size": 1}])


def two_models(stub: Stub, model: bytes) -> None:
    serve_model(stub, model, extra_layers=[{"mediaType": MODEL_MEDIA_TYPE, "digest": digest(model), "size": len(model)}])


@pytest.mark.parametrize(("case", "message"), [
    ("not a GGUF", "not a GGUF file"),
    ("a GGUF check refuses", "eps >= 0"),
    ("a config that is not JSON", "not valid JSON"),
    ("an adapter layer", "layer media type 'application/vnd.ollama.image.adapter'"),
    ("two model layers", "2 model layers"),
])
def test_layers_are_checked_before_they_enter_the_store(stub: tuple[Stub, str], model: bytes, tmp_path: Path,
                                                        workspace: Workspace, case: str, message: str) -> None:
    """Item 5: pull installed a model `check` refuses, a non-GGUF model, a config that is not JSON and an unexpected
    layer, all with exit 0."""
    served, host = stub
    if case == "not a GGUF":
        serve_model(served, b"not a model at all")
    elif case == "a GGUF check refuses":
        bad = with_keys(workspace.gguf("tiny-gemma3", "q8_0"), tmp_path / "bad.gguf",
                        {"modern-bert.attention.layer_norm_epsilon": (F32, -1.0)})
        serve_model(served, bad.read_bytes())
    elif case == "a config that is not JSON":
        not_json_config(served, model)
    elif case == "an adapter layer":
        unknown_layer(served, model)
    else:
        two_models(served, model)
    store = tmp_path / "store"
    with pytest.raises(UserError, match=message):
        timed_pull(host, store)
    assert not list_models(store)
    checked = {f"blobs/{digest(data).replace(':', '-')}" for data in (model, CONFIG)}  # blobs that pass their checks
    assert set(stored_files(store)) <= checked, "only blobs that passed their checks may be stored"
