"""The public Python API: `granite_gguf.Embedder`, a cheap `import granite_gguf`, errors catchable as ValueError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import granite_gguf
import granite_gguf.bindings
from granite_gguf.bindings.embedder import Embedder
from tests.helpers import run_cli_process


def test_embedder_is_importable_from_the_package_and_bindings() -> None:
    assert granite_gguf.Embedder is Embedder
    assert granite_gguf.bindings.Embedder is Embedder
    with pytest.raises(AttributeError, match="no attribute 'Embeder'"):
        granite_gguf.Embeder  # noqa: B018


def test_importing_the_package_loads_no_runtime() -> None:
    code = "import sys, granite_gguf; print(sorted(m for m in ('numpy', 'llama_cpp', 'gguf') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_bad_input_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such GGUF file"):
        Embedder(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="bad magic"):
        Embedder(not_gguf)


def test_the_cli_still_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    result = run_cli_process("inspect", str(tmp_path / "missing.gguf"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
