"""Running `granite-gguf serve` for tests: a subprocess on an ephemeral loopback port that stops by itself."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from tests.helpers import Workspace, cli_command

DIMS = (48, 32, 16)  # the Matryoshka widths of the served file (its full width is 64)
COSINE = 0.99999  # f32 file; the server packs inputs differently from a one-by-one reference
START_TIMEOUT_S = 120.0
MAX_TOKENS = 512  # every test server is started with --max-tokens 512


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    embedder: Embedder  # the same file in this process, for expected vectors and token counts
    log: Path  # the server's stdout and stderr

    def expected(self, texts: list[str], dim: int | None = None) -> np.ndarray:
        return self.embedder.encode(texts, truncate_dim=dim, batch_size=1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 10.0) -> str:
        """The log once it holds `text` (a request's line is written after its answer has gone out)."""
        deadline = time.monotonic() + timeout_s
        while text not in (log := self.log_text()):
            assert time.monotonic() < deadline, f"{text!r} not in the log:\n{log[-2000:]}"
            time.sleep(0.05)
        return log


@contextmanager
def running_server(gguf: Path | str | None, log: Path, *options: str,
                   env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`granite-gguf serve GGUF --port 0 …` (no GGUF: the files come from `env`) with its output in `log`, `env`
    added to this process's environment; yields its URL once it listens."""
    files = [] if gguf is None else [str(gguf)]
    with log.open("wb") as sink:
        process = subprocess.Popen(cli_command("serve", *files, "--port", "0", "--max-tokens", str(MAX_TOKENS), *options),
                                   stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (match := re.search(r"serving .* on (http://[\d.]+:\d+)", log.read_text(errors="replace"))):
            assert process.poll() is None and time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.05)
        yield match.group(1), process
    finally:
        process.terminate()
        process.wait(timeout=60)


@contextmanager
def served(gguf: Path, log: Path, *options: str) -> Iterator[RunningServer]:
    """`running_server` of one file, with the same file open in this process for expected vectors."""
    with running_server(gguf, log, *options) as (url, process), Embedder(gguf, max_tokens=MAX_TOKENS) as embedder:
        yield RunningServer(url, process, embedder, log)


def matryoshka_gguf(workspace: Workspace) -> Path:
    """The tiny Gemma-3-style fixture as f32 with Matryoshka widths DIMS: the file every server test serves."""
    path = workspace.root / "served.gguf"
    if not path.exists():
        convert(open_checkpoint(str(workspace.checkpoint("tiny-gemma3"))), path, OutType.F32, matryoshka_dims=DIMS)
    return path


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)
