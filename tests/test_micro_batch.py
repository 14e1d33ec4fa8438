"""The micro-batch rule for MEAN pooling (granite_gguf/llama_backend.py `micro_batch_size`), on each side.

llama.cpp 0.3.36 aborts the whole process (GGML_ASSERT in build_pooling) when a MEAN-pooled model's
context is created with n_ubatch not a multiple of the context's n_seq_max, so every size is tried
in a child process and the test asserts on its exit status.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.quantize import convert_set
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.llama_backend import micro_batch_size
from granite_gguf.probes import long_text, probe_texts
from granite_gguf.verify import run_reference
from tests.helpers import Workspace
from tests.mutations import mutated_copy

# llama-cpp-python's own context (n_seq_max = min(n_batch, 256)); prints "ok" once a vector came back.
LLAMA_CONTEXT = """
import sys, llama_cpp
size = int(sys.argv[2])
llama = llama_cpp.Llama(model_path=sys.argv[1], embedding=True, n_ctx=size, n_batch=size, n_ubatch=size, verbose=False)
assert len(llama.embed("hello world")) == llama.n_embd()
print("ok")
"""
# The Embedder's own context of `size` tokens (n_seq_max = min(size, 64)), bypassing the rounding.
SAMPLE = 96  # probe texts for the layout comparison (several micro-batches of 256 tokens)
EMBEDDER_CONTEXT = """
import sys
from llama_cpp._internals import LlamaContext
from granite_gguf.bindings.embedder import Embedder
from granite_gguf.llama_backend import context_params
llama = Embedder(sys.argv[1])._model._llama
LlamaContext(model=llama._model, params=context_params(llama, int(sys.argv[2])), verbose=False)
print("ok")
"""


def test_sizes_round_up_to_a_multiple_of_the_sequence_count() -> None:
    # n_seq_max is min(size, 64): small sizes are their own multiple, larger ones go to the next 64.
    assert [micro_batch_size(n) for n in (1, 17, 64, 65, 300, 2048, 2049, 2112, 2113, 8192)] == \
        [1, 17, 64, 128, 320, 2048, 2112, 2112, 2176, 8192]


@pytest.fixture(scope="module")
def mean_pooled(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny-o200k fixture with MEAN pooling: checkpoint folder and F32 GGUF."""
    root = tmp_path_factory.mktemp("mean")
    checkpoint = mutated_copy(workspace.checkpoint("tiny-o200k"), "wrong pooling", root / "checkpoint")
    gguf = root / "mean-f32.gguf"
    convert(open_checkpoint(str(checkpoint)), gguf, OutType.F32)
    return checkpoint, gguf


def _child(code: str, gguf: Path, size: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, str(gguf), str(size)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 2304, 2560, 3072, 4096])
def test_llama_cpp_python_context_of_a_multiple_of_256_works(mean_pooled: tuple[Path, Path], size: int) -> None:
    result = _child(LLAMA_CONTEXT, mean_pooled[1], size)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("size", [300, 1000, 2049, 2112, 3000])
def test_llama_cpp_python_context_off_the_rule_aborts(mean_pooled: tuple[Path, Path], size: int) -> None:
    # 300 and 1,000 abort too: the old 2,048-token cap was not the rule.
    result = _child(LLAMA_CONTEXT, mean_pooled[1], size)
    assert result.returncode == -signal.SIGABRT
    assert "GGML_ASSERT(ggml_can_mul_mat(a, b))" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("size", "aborts"), [(2112, False), (8192, False), (2049, True), (2100, True)])
def test_embedder_context_sizes_on_each_side(mean_pooled: tuple[Path, Path], size: int, aborts: bool) -> None:
    result = _child(EMBEDDER_CONTEXT, mean_pooled[1], size)
    assert result.returncode == (-signal.SIGABRT if aborts else 0), result.stderr[-2000:]


@pytest.mark.slow
def test_mean_pooled_inputs_past_2048_tokens_match_pytorch(mean_pooled: tuple[Path, Path]) -> None:
    """Inputs the old cap refused (cut to 2,048): the Embedder sizes its context by the rule and agrees
    with sentence-transformers on the whole input. Run in a child so an abort fails the test cleanly."""
    checkpoint, gguf = mean_pooled
    texts = [long_text(0, 9_000), long_text(500, 14_000)]
    reference = run_reference(str(checkpoint), texts)
    lengths = [len(ids) for ids in reference.token_ids]
    assert all(2048 < n < 8192 for n in lengths) and micro_batch_size(max(lengths)) % 64 == 0
    code = ("import sys, json, numpy as np\nfrom granite_gguf.bindings.embedder import Embedder\n"
            "e = Embedder(sys.argv[1]); v = e.encode(json.loads(sys.stdin.read()))\n"
            "print(e._contexts[0].capacity); np.save(sys.stdout.buffer, v)")
    result = subprocess.run([sys.executable, "-c", code, str(gguf)], input=json.dumps(texts).encode(),
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:].decode(errors="replace")
    capacity_line, _, payload = result.stdout.partition(b"\n")
    assert int(capacity_line) == micro_batch_size(max(lengths))
    vectors = np.load(io.BytesIO(payload))
    cosines = _cosines(vectors, reference.vectors)
    assert cosines.min() > OutType.F32.min_cosine, cosines


@pytest.mark.slow
def test_repacked_q4_0_blocks_are_reported(workspace: Workspace, tmp_path: Path) -> None:
    """The 4-bit blocks llama.cpp's CPU backend repacks show in Embedder.repacked; F32 has no CPU_REPACK buffer."""
    [quantized] = convert_set(open_checkpoint(str(workspace.checkpoint("tiny-o200k"))), tmp_path, [OutType.Q4_0],
                              model_name="tiny-o200k")
    with Embedder(quantized.path) as embedder:
        q4_0 = sum(t.ggml_type == GGMLQuantizationType.Q4_0 for t in embedder.header.tensors)
        assert q4_0 > 0 and embedder.repacked.tensors == q4_0 and embedder.repacked.mib > 0
        assert embedder.repacked.describe() == f"repacked: {q4_0} tensors, {embedder.repacked.mib:.1f} MiB (CPU_REPACK)"
    with Embedder(workspace.gguf("tiny-o200k")) as embedder:
        assert embedder.repacked.tensors == 0 and embedder.repacked.describe().startswith("repacked: none")


@pytest.mark.slow
def test_worker_layouts_give_the_same_vectors(workspace: Workspace) -> None:
    """Two single-threaded contexts on one model (threads) embed as one two-threaded context does."""
    reference = run_reference(str(workspace.checkpoint("tiny-o200k")), probe_texts()[:SAMPLE])
    gguf = workspace.gguf("tiny-o200k")
    with Embedder(gguf, n_threads=2, workers=1, batch_tokens=256) as one, \
            Embedder(gguf, n_threads=2, workers=2, batch_tokens=256) as two:
        assert (one.layout.workers, one.layout.threads, two.layout.workers, two.layout.threads) == (1, 2, 2, 1)
        single, split = one.encode(reference.texts), two.encode(reference.texts)
        assert all(context.capacity > 0 for context in two._contexts)  # both workers decoded
    np.testing.assert_allclose(split, single, atol=2e-6)
    assert _cosines(split, reference.vectors).min() > OutType.F32.min_cosine


@pytest.mark.slow
def test_long_inputs_grow_one_context_only(workspace: Workspace) -> None:
    """Inputs longer than batch_tokens are decoded by the first context alone (with every thread), so
    llama.cpp's per-context output buffer (n_vocab floats per token) is paid once, not per worker."""
    gguf = workspace.gguf("tiny-o200k")
    texts = [text for text in probe_texts() if len(text) > 1500][:3] + list(probe_texts()[:40])
    with Embedder(gguf, n_threads=2, workers=1, batch_tokens=128) as one, \
            Embedder(gguf, n_threads=2, workers=2, batch_tokens=128) as two:
        lengths = [len(two.tokenize(text)) for text in texts]
        assert sum(length > 128 for length in lengths) == 3  # three long inputs, the rest packable
        split, single = two.encode(texts), one.encode(texts)
        first, second = (context.capacity for context in two._contexts)
        assert first >= max(lengths) and 0 < second <= 128, (first, second)
    np.testing.assert_allclose(split, single, atol=2e-6)


def _cosines(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.sum(ours * reference, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
