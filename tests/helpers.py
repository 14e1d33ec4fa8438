"""Shared test helpers: the workspace of tiny checkpoints, their GGUFs and reference runs (tests/conftest.py holds
one per session), free ports, store trees, certificates, the command line in and out of process.

Everything is generated here (nothing is downloaded); results are cached per test session because
the PyTorch reference on the full probe set takes ~15 s per checkpoint.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from granite_gguf.certificate import Certificate, read_certificate
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.dev.fixtures import FIXTURES, build_fixture
from granite_gguf.gguf_file.header import read_header
from granite_gguf.modelfiles.store import LOCK_FILE
from granite_gguf.verify import Reference, run_reference

FAMILIES = list(FIXTURES)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path → bytes) but the store's empty lock file: compares whole stores."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def certificate_of(path: Path) -> Certificate:
    """The certificate written into the GGUF at `path`; the test fails if it has none."""
    certificate = read_certificate(read_header(path))
    assert certificate is not None, f"{path}: no certificate"
    return certificate


def run_cli(*argv: str) -> int:
    """The real `granite-gguf` entry point in this process (its error handling and exit status)."""
    from granite_gguf.cli import main

    return main(list(argv))


def cli_command(*args: str) -> list[str]:
    """`granite-gguf ARGS` as a separate process (for signals, tracebacks and stderr as a user sees them)."""
    return [sys.executable, "-m", "granite_gguf.cli", *args]


def run_cli_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), capture_output=True, text=True)


class Workspace:
    """Builds fixtures, GGUFs and references on first use and remembers them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._references: dict[str, Reference] = {}

    def checkpoint(self, name: str) -> Path:
        return build_fixture(name, self.root / name)

    def gguf(self, name: str, outtype: str = "f32") -> Path:
        path = self.root / f"{name}-{outtype}.gguf"
        if not path.exists():
            convert(open_checkpoint(str(self.checkpoint(name))), path, OutType.parse(outtype))
        return path

    def reference(self, name: str) -> Reference:
        if name not in self._references:
            self._references[name] = run_reference(str(self.checkpoint(name)))
        return self._references[name]
