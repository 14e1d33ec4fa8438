"""node-llama-cpp 3.21.1 (scripts/install-node-llama-cpp.sh) on a converted file: docs/ollama.md's settings are needed.

With its default embedding context (batch 512) an input longer than 512 tokens is decoded in pieces that this
non-causal model encodes separately, and the vector is wrong with no error; with contextSize = batchSize = N it is
the bindings' vector. Either way getEmbeddingFor returns it unnormalized.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.files import cache_dir
from granite_gguf.probes import long_text
from tests.helpers import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.download]

VERSION = "3.21.1"


def run_probe(gguf: Path, n: int, text: str, folder: Path) -> dict[str, np.ndarray]:
    modules = cache_dir() / f"node-llama-cpp-{VERSION}" / "node_modules"
    if shutil.which("node") is None or not (modules / "node-llama-cpp").is_dir():
        pytest.fail(f"node-llama-cpp {VERSION} is not installed: run `bash scripts/install-node-llama-cpp.sh` (needs node)")
    probe = Path(shutil.copy(Path(__file__).with_name("node_llama_cpp_probe.mjs"), folder / "probe.mjs"))
    (folder / "node_modules").symlink_to(modules)  # ES modules resolve packages beside the script
    result = subprocess.run(["node", str(probe), str(gguf), str(n), text], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: np.array(vector) for name, vector in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_node_llama_cpp_needs_the_batch_sized_to_the_input(workspace: Workspace, tmp_path: Path) -> None:
    gguf = workspace.gguf("tiny-gpt2", "f32")
    with Embedder(gguf) as embedder:
        text = long_text(0, 2_500)
        tokens = len(embedder.tokenize(text))
        expected = embedder.encode([text])[0]
        n = embedder.max_tokens
    assert 650 <= tokens <= n
    vectors = run_probe(gguf, n, text, tmp_path)
    assert cosine(vectors["sized"], expected) >= 0.99999
    assert cosine(vectors["default"], expected) < 0.9, "node-llama-cpp's default now takes long inputs whole: update docs/ollama.md"
    assert abs(float(np.linalg.norm(vectors["sized"])) - 1) > 0.01, "node-llama-cpp now normalizes: update docs/ollama.md"
