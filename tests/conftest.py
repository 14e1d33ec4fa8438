"""Shared, session-scoped fixtures: the three tiny checkpoints, their GGUFs and reference runs.

Everything is generated here (nothing is downloaded); results are cached per test session because
the PyTorch reference on the full probe set takes ~15 s per checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from granite_gguf.convert.source import open_checkpoint  # noqa: E402
from granite_gguf.convert.types import OutType  # noqa: E402
from granite_gguf.convert.writer import convert  # noqa: E402
from granite_gguf.fixtures import FIXTURES, build_fixture  # noqa: E402
from granite_gguf.verify import Reference, run_reference  # noqa: E402

FAMILIES = list(FIXTURES)


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


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("fixtures"))
