"""The Embedder against sentence-transformers: Matryoshka truncation, packing, long and odd inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from granite_gguf.bindings.embedder import Embedder, LongInputs
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.errors import UserError
from granite_gguf.probes import probe_texts
from tests.helpers import FAMILIES, Workspace

pytestmark = [pytest.mark.slow]

DIMS = (48, 32, 16)  # declared in the test files; the fixtures' hidden size is 64
F32_COSINE = 0.99999


@pytest.fixture(scope="module")
def matryoshka_files(workspace: Workspace) -> dict[str, Path]:
    """Each fixture family converted to f32 with Matryoshka dimensions declared."""
    return {
        family: convert(open_checkpoint(str(workspace.checkpoint(family))), workspace.root / f"{family}-mrl.gguf",
                        OutType.F32, matryoshka_dims=DIMS)
        for family in FAMILIES
    }


def sample_texts() -> list[str]:
    """Every 10th probe text (~210, all scripts, some past the local window), plus odd inputs."""
    return list(probe_texts()[::10]) + ["", " ", "\n\t ", "a", "😀🎉", "x\u0000y"]


def sentence_transformer(folder: Path, max_tokens: int = 8192):  # noqa: ANN201 - torch type left out on purpose
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    model.max_seq_length = max_tokens
    return model


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_matches_sentence_transformers_for_every_declared_dim(
        workspace: Workspace, matryoshka_files: dict[str, Path], family: str) -> None:
    texts = sample_texts()
    model = sentence_transformer(workspace.checkpoint(family))
    with Embedder(matryoshka_files[family]) as embedder:
        assert embedder.matryoshka_dims == DIMS
        for dim in (None, *DIMS):
            expected = model.encode(texts, truncate_dim=dim, normalize_embeddings=True, convert_to_numpy=True)
            ours = embedder.encode(texts, truncate_dim=dim)
            assert ours.shape == (len(texts), dim or 64) and ours.dtype == np.float32
            assert min_cosine(ours, expected) >= F32_COSINE, f"truncate_dim={dim}"
            assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_truncate_dim_renormalizes_the_prefix(matryoshka_files: dict[str, Path]) -> None:
    with Embedder(matryoshka_files["tiny-gemma3"]) as embedder:
        full = embedder.encode(["Matryoshka"], normalize_embeddings=False)[0]
        short = embedder.encode(["Matryoshka"], truncate_dim=16)[0]
    assert np.allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    assert not np.allclose(np.linalg.norm(full[:16]), 1.0, atol=1e-3), "the prefix alone must not be unit length"


def test_undeclared_dim_is_refused_with_the_valid_ones(workspace: Workspace, matryoshka_files: dict[str, Path]) -> None:
    with Embedder(matryoshka_files["tiny-o200k"]) as embedder:
        with pytest.raises(UserError, match="valid: 64, 48, 32, 16"):
            embedder.encode("x", truncate_dim=20)
    with Embedder(workspace.gguf("tiny-o200k")) as embedder:  # declares none: only the full size
        assert embedder.matryoshka_dims == ()
        with pytest.raises(UserError, match="valid: 64$"):
            embedder.encode("x", truncate_dim=32)


@pytest.mark.parametrize("family", FAMILIES)
def test_packing_does_not_change_vectors(workspace: Workspace, family: str) -> None:
    texts = sample_texts()
    with Embedder(workspace.gguf(family), batch_tokens=512) as embedder:
        one_per_decode = embedder.encode(texts, batch_size=1)
        packed = embedder.encode(texts, batch_size=64)
    assert min_cosine(one_per_decode, packed) >= F32_COSINE


def test_odd_inputs_match_the_reference(workspace: Workspace) -> None:
    """Empty and whitespace strings are embedded like sentence-transformers does; lone surrogates
    (which HF tokenizers refuse) are read as U+FFFD."""
    texts = ["", "   ", "\n", "a\ud800b", "\udfff"]
    readable = ["", "   ", "\n", "a\ufffdb", "\ufffd"]
    expected = sentence_transformer(workspace.checkpoint("tiny-gemma3")).encode(readable, normalize_embeddings=True)
    with Embedder(workspace.gguf("tiny-gemma3")) as embedder:
        ours = embedder.encode(texts)
    assert min_cosine(ours, expected) >= F32_COSINE


@pytest.mark.parametrize("family", FAMILIES)
def test_three_times_the_context(workspace: Workspace, family: str) -> None:
    """3× the file's context: a vector under truncate and chunk, a clear error under error."""
    gguf = workspace.gguf(family)
    with Embedder(gguf) as embedder:
        context = int(embedder.summary.arch_value("context_length"))
        unit = "Lorem ipsum dolor sit amet, 42 Grüße. "
        per_unit = len(embedder.tokenize(unit)) - len(embedder.tokenize(""))
        text = unit * (3 * context // per_unit * 11 // 10)  # joined units tokenize a little shorter
        assert len(embedder.tokenize(text)) > 3 * context
        with pytest.raises(UserError, match="longer than max_tokens"):
            embedder.encode([text, "short"], long_inputs="error")
        truncated = embedder.encode(text, long_inputs="truncate")
        assert embedder.truncated_inputs == 1
        chunked = embedder.encode(text, long_inputs=LongInputs.CHUNK)
        for vector in (truncated, chunked):
            assert np.all(np.isfinite(vector)) and abs(np.linalg.norm(vector) - 1) < 1e-5
        limit = embedder.max_tokens
    # Truncation keeps the special tokens, as sentence-transformers does at max_seq_length.
    expected = sentence_transformer(workspace.checkpoint(family), limit).encode([text], normalize_embeddings=True)
    assert min_cosine(truncated[None], expected) >= F32_COSINE


def test_chunks_cover_the_input_with_overlap(workspace: Workspace) -> None:
    with Embedder(workspace.gguf("tiny-gpt2"), max_tokens=64) as embedder:
        tokens = embedder.tokenize("one two three four five six seven eight nine ten " * 40)
        specials = embedder.tokenize("")
        pieces = list(embedder._pieces(["one two three four five six seven eight nine ten " * 40], LongInputs.CHUNK))
        content = tokens[1:-1] if len(specials) == 2 else tokens
        assert len(pieces) > 1
        covered = []
        for piece in pieces:
            assert len(piece.tokens) <= 64
            assert piece.tokens[:1] == specials[:1] and piece.tokens[-1:] == specials[-1:]
            covered.append(piece.tokens[1:-1])
        joined = covered[0]
        for window in covered[1:]:
            overlap = 62 // 8
            assert window[:overlap] == joined[-overlap:]
            joined += window[overlap:]
        assert joined == content
        # An input that fits is one piece and gives the same vector as without chunking.
        text = "fits in one window"
        assert np.allclose(embedder.encode(text, long_inputs="chunk"), embedder.encode(text), atol=1e-6)


def test_bad_arguments_are_user_errors(workspace: Workspace, tmp_path: Path) -> None:
    with Embedder(workspace.gguf("tiny-gpt2")) as embedder:
        with pytest.raises(UserError, match="long_inputs"):
            embedder.encode("x", long_inputs="drop")
        with pytest.raises(UserError, match="batch_size"):
            embedder.encode("x", batch_size=0)
        with pytest.raises(UserError, match="strings"):
            embedder.encode(["x", 3])  # type: ignore[list-item]
        assert embedder.encode([]).shape == (0, embedder.dimension)
    with pytest.raises(UserError, match="no such GGUF"):
        Embedder(tmp_path / "missing.gguf")


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_written_in_the_text_are_read_like_hf(workspace: Workspace, family: str) -> None:
    import json

    from tokenizers import Tokenizer

    folder = workspace.checkpoint(family)
    specials = [value if isinstance(value, str) else value["content"]
                for value in json.loads((folder / "special_tokens_map.json").read_text()).values()]
    text = f"before {specials[0]} middle {specials[-1]} after"
    hf_ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
    expected = sentence_transformer(folder).encode([text], normalize_embeddings=True)
    with Embedder(workspace.gguf(family)) as embedder:
        assert embedder.tokenize(text) == hf_ids
        assert min_cosine(embedder.encode([text]), expected) >= F32_COSINE
