"""Real servers the slow tests start on loopback: a process that answers HTTP, stopped when the test is done.

Each server also stops by itself if the test process dies (Linux PR_SET_PDEATHSIG), so an interrupted run
leaves no llama-server or ollama behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import free_port

START_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def log_tail(log: Path) -> str:
    return f"log {log}:\n{log.read_text(errors='replace')[-6000:]}"


@contextmanager
def started(command: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` until `ready_url` answers 200 (the test fails with the log if it exits or takes too long)."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}: {' '.join(command)}\n{log_tail(log)}")
            try:
                if requests.get(ready_url, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} not ready after {START_TIMEOUT_S:.0f} s: {' '.join(command)}\n{log_tail(log)}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def installed_binary(name: str, variable: str, script: str) -> Path:
    """`$variable`, else .venv/bin/`name` (linked there by scripts/`script`); the test fails if it is missing."""
    binary = Path(os.environ.get(variable) or Path(sys.prefix) / "bin" / name)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"{binary}: not installed; run `bash scripts/{script}` (or set {variable})")
    return binary


OLLAMA_VERSION = "0.5.4-ipexllm-20250407"


@dataclass
class Ollama:
    """A real `ollama serve` (scripts/install-ollama.sh) on 127.0.0.1:PORT with its own HOME and model store."""

    binary: Path
    host: str  # 127.0.0.1:PORT, as OLLAMA_HOST
    models: Path
    home: Path
    log: Path

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "OLLAMA_HOST": self.host,
                "OLLAMA_MODELS": str(self.models), "OLLAMA_NOPRUNE": ""}

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The ollama client command `ollama ARGS`, talking to this server."""
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env(), cwd=cwd,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        result = self.run(*args, cwd=cwd)
        assert result.returncode == 0, f"ollama {' '.join(args)}: {result.returncode}\n{result.stderr[-3000:]}\n{log_tail(self.log)}"
        return result.stdout

    def error(self, *args: str, cwd: Path | None = None) -> str:
        """The `Error: …` line of a command that must fail."""
        result = self.run(*args, cwd=cwd)
        assert result.returncode != 0, f"ollama {' '.join(args)} succeeded:\n{result.stdout[-2000:]}"
        lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert lines, result.stderr[-3000:]
        return lines[-1].removeprefix("Error: ")

    def api(self, route: str, body: dict[str, object]) -> dict[str, object]:
        response = requests.post(f"http://{self.host}{route}", data=json.dumps(body), timeout=120)
        assert response.status_code == 200, f"{route}: {response.status_code} {response.text[:500]}"
        return response.json()

    def clear(self) -> None:
        """Empty the store (the server reads it from disk on every request)."""
        for entry in ("manifests", "blobs"):
            shutil.rmtree(self.models / entry, ignore_errors=True)


@contextmanager
def ollama_server(root: Path) -> Iterator[Ollama]:
    binary = installed_binary("ollama", "GRANITE_GGUF_OLLAMA", "install-ollama.sh")
    (root / "home").mkdir(parents=True)
    (root / "models").mkdir()
    server = Ollama(binary, f"127.0.0.1:{free_port()}", root / "models", root / "home", root / "serve.log")
    with started([str(binary), "serve"], f"http://{server.host}/api/version", server.log, server.env()):
        version = requests.get(f"http://{server.host}/api/version", timeout=10).json()["version"]
        assert version == OLLAMA_VERSION, version
        yield server


REGISTRY_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "start-registry.sh"


def start_registry(tmp_path_factory: pytest.TempPathFactory, *flags: str) -> Iterator[tuple[str, Path]]:
    """(host:port, storage folder) of a registry started by scripts/start-registry.sh; stops every process it started."""
    for binary in ("docker-registry", "nginx"):
        if shutil.which(binary, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None:
            pytest.fail(f"{binary} is missing: .ci/run installs it (scripts/install-test-services.sh)")
    data = tmp_path_factory.mktemp("registry")
    port = free_port()
    started = subprocess.run([str(REGISTRY_SCRIPT), *flags, str(port), str(data)], check=False, capture_output=True,
                             text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pids = [int(line) for line in started.stdout.split()]
    assert len(pids) == (1 if flags else 2)
    try:
        yield f"127.0.0.1:{port}", data / "storage"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        for pid in pids:
            for _ in range(50):
                if not running(pid):
                    break
                time.sleep(0.1)


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a process whose parent script has exited may stay one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
