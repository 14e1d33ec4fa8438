"""Build a deterministic FULL-SIZE random checkpoint with the shapes of a Granite R2 model (granite_gguf.models).

For conversion benchmarks (memory, time), never for quality: the weights are seeded noise. The
tokenizer is the small trained fixture tokenizer of the same family, grown to the real vocabulary
size with unique filler tokens, each reachable by one extra merge (so the merges list also has a
realistic length), none holding a newline. Weights are streamed into safetensors in row chunks, never the whole model in
memory; a checkpoint above SHARD_BYTES (the 311m) is written as shards with a `model.safetensors.index.json`.
Weights are bit-for-bit reproducible; tokenizer.json is as reproducible as `fixtures.train_tokenizer`.

    python scripts/build_full_size_checkpoint.py --shape 311m --dest /tmp/full311m
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from granite_gguf.convert.architecture import Dimensions
from granite_gguf.convert.modern_bert import layout
from granite_gguf.convert.tokenizer import BYTE_PIECES
from granite_gguf.dev.fixtures import (
    FIXTURES,
    FixtureShape,
    train_tokenizer,
    write_config,
    write_sentence_transformers,
    write_tokenizer_files,
)
from granite_gguf.models import MODELS, Model

WEIGHT_STD = 0.02
CHUNK_BYTES = 16 * 1024 * 1024


SHARD_BYTES = 1 << 30


@dataclass(frozen=True)
class FullShape:
    """A published model's real dimensions plus the tiny fixture whose tokenizer family and config style it reuses."""

    fixture: FixtureShape  # mirrors the model itself
    dims: Dimensions
    vocab: int

    @property
    def shards(self) -> int:
        return -(-sum(4 * int(np.prod(t.shape)) for t in layout(self.dims, self.vocab)) // SHARD_BYTES)


def full_shape(model: Model) -> FullShape:
    fixture = next(shape for shape in FIXTURES.values() if shape.family is model.family)
    return FullShape(dataclasses.replace(fixture, name=f"full-{model.short}", mirrors=model), model.shape.dims, model.shape.vocab)


SHAPES: dict[str, FullShape] = {model.short: full_shape(model) for model in MODELS}


def build(shape: FullShape, dest: Path) -> None:
    """Write the whole checkpoint (tokenizer files, config, sentence-transformers modules, weights) into `dest`."""
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer, specials = grown_tokenizer(shape)
    (dest / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    write_tokenizer_files(dest, specials)
    write_config(dest, shape.fixture, shape.vocab, specials, tokenizer, shape.dims)
    write_sentence_transformers(dest, shape.fixture, shape.dims.hidden)
    write_weights(dest, shape)


def grown_tokenizer(shape: FullShape) -> tuple[Any, dict[str, str]]:
    """The fixture tokenizer of the family, with filler tokens `a+b` (and merges `a b`) up to `shape.vocab`."""
    from tokenizers import Tokenizer

    small, specials = train_tokenizer(shape.fixture)
    data = json.loads(small.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list[list[str]] = data["model"]["merges"]
    base = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in BYTE_PIECES and t not in specials.values()]
    # no filler holds a newline: llama.cpp's Gemma-style splitter cuts text at newlines (real vocabularies
    # of that family hold newline runs only) and takes a whole run that is a token at once, so a filler
    # mixing a newline with text, or a run reachable only by a late merge, tokenizes differently in HF
    pairs = ((a, b) for a in base for b in base if a + b not in vocab and "\n" not in a + b)
    while len(vocab) < shape.vocab:
        a, b = next(pairs)
        vocab[a + b] = len(vocab)
        merges.append([a, b])
    return Tokenizer.from_str(json.dumps(data)), specials


def write_weights(folder: Path, shape: FullShape) -> None:
    """Split the tensors into `shape.shards` files of about equal size (in state-dict order) and stream each."""
    shapes = {t.hf_name: t.shape for t in layout(shape.dims, shape.vocab)}  # state-dict order
    total = sum(4 * int(np.prod(s)) for s in shapes.values())
    groups: list[dict[str, tuple[int, ...]]] = [{} for _ in range(shape.shards)]
    done = 0
    for name, dims in shapes.items():
        groups[min(shape.shards - 1, done * shape.shards // total)][name] = dims
        done += 4 * int(np.prod(dims))
    rng = np.random.default_rng(shape.fixture.seed)
    if shape.shards == 1:
        write_safetensors(folder / "model.safetensors", groups[0], rng)
        return
    weight_map = {}
    for index, group in enumerate(groups, 1):
        file_name = f"model-{index:05d}-of-{shape.shards:05d}.safetensors"
        write_safetensors(folder / file_name, group, rng)
        weight_map.update(dict.fromkeys(group, file_name))
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> None:
    """A float32 safetensors file (tensors sorted by name, as the reference writer does), data in row chunks."""
    names = sorted(shapes)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        nbytes = 4 * int(np.prod(shapes[name]))
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format allows space padding; keeps the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            f.writelines(chunk.tobytes() for chunk in _tensor_chunks(shapes[name], rng))


def _tensor_chunks(dims: tuple[int, ...], rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Norm weights are ones; matrices are N(0, WEIGHT_STD) float32, generated CHUNK_BYTES at a time."""
    if len(dims) == 1:
        yield np.ones(dims, dtype="<f4")
        return
    rows, cols = dims
    step = max(1, CHUNK_BYTES // (4 * cols))
    for first in range(0, rows, step):
        count = min(step, rows - first)
        yield (rng.standard_normal((count, cols), dtype=np.float32) * np.float32(WEIGHT_STD)).astype("<f4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--dest", type=Path, required=True, help="new or empty folder")
    parser.add_argument("--dtype", choices=["f32"], default="f32", help="weight storage type (only f32)")
    args = parser.parse_args(argv)
    build(SHAPES[args.shape], args.dest)
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"{args.dest}: {args.shape}-shaped checkpoint, {size / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
