"""Validate a GGUF before llama.cpp sees it: llama.cpp aborts the process on some malformed files.

The header is read with a small bounded parser (not gguf-py's reader, which maps whole arrays at
once): every count and length is checked against the bytes left in the file before anything is
read or allocated. Then the modern-bert contract: required keys and their types, tokenizer arrays
of equal length with unique texts (duplicates abort llama.cpp 0.3.36), special ids in range, each
tensor's type, shape, offset and size within the data section. Limits and reasons: docs/security.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from granite_gguf.convert import keys
from granite_gguf.convert.modern_bert import tensor_shapes
from granite_gguf.convert.tokenizer import MAX_VOCAB
from granite_gguf.errors import UserError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_TENSORS = 65_536
MAX_KEYS = 65_536
MAX_KEY_BYTES = 1_024
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 16 * 1024 * 1024

MAX_DIMS = 4
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1
DEFAULT_ALIGNMENT = 32

SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
INTEGER_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
                 GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
# modern-bert keys llama.cpp requires, and their value kind.
REQUIRED_ARCH_KEYS = {
    "context_length": "int", "embedding_length": "int", "block_count": "int", "feed_forward_length": "int",
    "attention.head_count": "int", "attention.layer_norm_epsilon": "float", "pooling_type": "int",
}
TOKENIZER_ARRAYS = {
    "tokenizer.ggml.token_type": GGUFValueType.INT32, "tokenizer.ggml.scores": GGUFValueType.FLOAT32,
    "tokenizer.ggml.merges": GGUFValueType.STRING,
}
SPECIAL_ID_KEYS = ("bos", "eos", "unknown", "seperator", "padding", "cls", "mask")


class GGUFCheckError(UserError):
    """The file is not one llama.cpp can be trusted to load; the message says why."""


@dataclass
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: ne[0] (row length) first
    ggml_type: GGMLQuantizationType
    offset: int
    n_bytes: int


@dataclass
class CheckedFile:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    value_types: dict[str, GGUFValueType] = field(default_factory=dict)
    item_types: dict[str, GGUFValueType] = field(default_factory=dict)  # for arrays
    tensors: list[TensorInfo] = field(default_factory=list)


class _Reader:
    """Little-endian reads that never go past the end of the file."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size

    def left(self) -> int:
        return self.size - self.handle.tell()

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left():
            raise GGUFCheckError(f"{what}: {n} bytes needed, {self.left()} left in the file")
        return self.handle.read(n)

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings in a row, bounded as `string` bounds one; the position is counted here rather
        than asked of the file per string (a 200k-token vocabulary: about 4x faster, the Embedder's start)."""
        read, unpack, left, items = self.handle.read, struct.unpack, self.left(), []
        for index in range(count):
            if left < 8:
                raise GGUFCheckError(f"{what}[{index}]: 8 bytes needed, {left} left in the file")
            (length,) = unpack("<Q", read(8))
            if length > MAX_STRING_BYTES:
                raise GGUFCheckError(f"{what}[{index}]: string of {length} bytes (limit {MAX_STRING_BYTES})")
            if length > left - 8:
                raise GGUFCheckError(f"{what}[{index}]: {length} bytes needed, {left - 8} left in the file")
            left -= 8 + length
            try:
                items.append(read(length).decode("utf-8"))
            except UnicodeDecodeError:
                raise GGUFCheckError(f"{what}[{index}]: string is not UTF-8") from None
        return items

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        length = self.scalar("<Q", what)
        if length > limit:
            raise GGUFCheckError(f"{what}: string of {length} bytes (limit {limit})")
        try:
            return self.take(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFCheckError(f"{what}: string is not UTF-8") from None


def read_header(path: Path) -> CheckedFile:
    """Keys, values and tensor infos of any GGUF, bounded and validated structurally (no model checks).

    Also what `inspect` reads: much faster than gguf-py's reader on large vocabularies (a 262k-token
    file in about a second instead of twenty).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            return _read_header(_Reader(handle, size), path)
    except OSError as exc:
        raise GGUFCheckError(f"{path}: cannot read ({exc.strerror})") from None
    except GGUFCheckError as exc:
        raise GGUFCheckError(f"{path}: {exc}") from None


def check_gguf(path: Path) -> CheckedFile:
    """Read and validate `path`; raise GGUFCheckError with the first problem found."""
    checked = read_header(path)
    try:
        _check_model(checked)
    except GGUFCheckError as exc:
        raise GGUFCheckError(f"{path}: {exc}") from None
    return checked


def _read_header(reader: _Reader, path: Path) -> CheckedFile:
    """Keys, values and tensor infos, each bounded by the bytes left; tensor data within the file."""
    magic = reader.take(4, "magic") if reader.left() >= 4 else b""
    if magic != MAGIC:
        raise GGUFCheckError("not a GGUF file (bad magic)")
    version = reader.scalar("<I", "version")
    if version not in VERSIONS:
        raise GGUFCheckError(f"GGUF version {version} is not supported (only {', '.join(map(str, VERSIONS))})")
    n_tensors, n_keys = reader.scalar("<Q", "tensor count"), reader.scalar("<Q", "key count")
    if n_tensors > MAX_TENSORS or n_keys > MAX_KEYS:
        raise GGUFCheckError(f"{n_tensors} tensors / {n_keys} keys exceed the limits ({MAX_TENSORS} / {MAX_KEYS})")
    checked = CheckedFile(path, version)
    for _ in range(n_keys):
        key = reader.string("key", MAX_KEY_BYTES)
        if key in checked.metadata:
            raise GGUFCheckError(f"key {key!r} appears twice")
        value_type = _value_type(reader.scalar("<I", key), key)
        checked.value_types[key] = value_type
        checked.metadata[key] = _value(reader, value_type, key, checked.item_types)
    alignment = checked.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFCheckError(f"general.alignment {alignment!r} is not a power of two")
    names: set[str] = set()
    for index in range(n_tensors):
        tensor = _tensor_info(reader, index)
        if tensor.name in names:
            raise GGUFCheckError(f"tensor {tensor.name!r} appears twice")
        names.add(tensor.name)
        checked.tensors.append(tensor)
    data_start = -(-reader.handle.tell() // alignment) * alignment
    data_size = reader.size - data_start
    end_of_previous = 0
    for tensor in sorted(checked.tensors, key=lambda t: t.offset):
        if tensor.offset % alignment:
            raise GGUFCheckError(f"tensor {tensor.name}: offset {tensor.offset} is not aligned to {alignment}")
        if tensor.offset < end_of_previous:
            raise GGUFCheckError(f"tensor {tensor.name}: overlaps the tensor before it")
        end_of_previous = tensor.offset + tensor.n_bytes
        if end_of_previous > data_size:
            raise GGUFCheckError(f"tensor {tensor.name}: data ends at byte {data_start + end_of_previous}, "
                                 f"past the end of the file ({reader.size} bytes)")
    return checked


def _value_type(raw: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise GGUFCheckError(f"key {key!r}: unknown value type {raw}") from None


def _value(reader: _Reader, value_type: GGUFValueType, key: str, item_types: dict[str, GGUFValueType]) -> Any:
    if value_type in SCALARS:
        return reader.scalar(SCALARS[value_type], key)
    if value_type == GGUFValueType.STRING:
        return reader.string(key)
    item_type = item_types[key] = _value_type(reader.scalar("<I", key), key)
    count = reader.scalar("<Q", key)
    if item_type == GGUFValueType.ARRAY:
        raise GGUFCheckError(f"key {key!r}: nested arrays are not supported by llama.cpp")
    smallest = struct.calcsize(SCALARS[item_type]) if item_type in SCALARS else 8
    if count > MAX_ARRAY_ITEMS or count * smallest > reader.left():
        raise GGUFCheckError(f"key {key!r}: array of {count} items does not fit the file")
    if item_type == GGUFValueType.STRING:
        return reader.strings(count, key)
    fmt = SCALARS[item_type]
    return list(struct.unpack(f"<{count}{fmt[1]}", reader.take(count * struct.calcsize(fmt), key)))


def _tensor_info(reader: _Reader, index: int) -> TensorInfo:
    name = reader.string(f"tensor {index} name", MAX_NAME_BYTES)
    n_dims = reader.scalar("<I", name)
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFCheckError(f"tensor {name}: {n_dims} dimensions (1..{MAX_DIMS} allowed)")
    dims = tuple(reader.scalar("<Q", name) for _ in range(n_dims))
    if any(d <= 0 or d >= 1 << 40 for d in dims):
        raise GGUFCheckError(f"tensor {name}: dimensions {list(dims)} out of range")
    raw_type = reader.scalar("<I", name)
    try:
        ggml_type = GGMLQuantizationType(raw_type)
        block, type_size = GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError):
        raise GGUFCheckError(f"tensor {name}: unknown ggml type {raw_type}") from None
    if dims[0] % block:
        raise GGUFCheckError(f"tensor {name}: row length {dims[0]} is not a multiple of {ggml_type.name}'s block {block}")
    elements = 1
    for d in dims:
        elements *= d
    offset = reader.scalar("<Q", name)
    return TensorInfo(name, dims, ggml_type, offset, elements // block * type_size)


def _check_model(checked: CheckedFile) -> None:
    meta = checked.metadata
    arch = meta.get("general.architecture")
    if arch != keys.ARCH:
        raise GGUFCheckError(f"architecture {arch!r}; only {keys.ARCH} files are checked and run by granite-gguf")
    hparams = {}
    for name, kind in REQUIRED_ARCH_KEYS.items():
        key = f"{arch}.{name}"
        if key not in meta:
            raise GGUFCheckError(f"required key {key} is missing")
        is_int = checked.value_types[key] in INTEGER_TYPES
        is_float = checked.value_types[key] in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64)
        if (kind == "int" and not is_int) or (kind == "float" and not is_float):
            raise GGUFCheckError(f"key {key} has type {checked.value_types[key].name}, expected {kind}")
        hparams[name] = meta[key]
    for name in ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
        if not 0 < hparams[name] < 1 << 24:
            raise GGUFCheckError(f"{arch}.{name} = {hparams[name]} is out of range")
    if hparams["embedding_length"] % hparams["attention.head_count"]:
        raise GGUFCheckError("embedding_length is not a multiple of attention.head_count")
    n_vocab = _check_vocab(checked)
    expected = tensor_shapes(hparams["embedding_length"], hparams["feed_forward_length"], hparams["block_count"], n_vocab)
    found = {tensor.name: tensor for tensor in checked.tensors}
    for name, shape in expected.items():
        if name not in found:
            raise GGUFCheckError(f"tensor {name} is missing")
        if found[name].dims != tuple(reversed(shape)):
            raise GGUFCheckError(f"tensor {name} has shape {list(found[name].dims)}, the metadata implies "
                                 f"{list(reversed(shape))}")


def _check_vocab(checked: CheckedFile) -> int:
    """Token arrays of one length, unique texts, special ids in range; returns the vocabulary size."""
    meta = checked.metadata
    tokens = meta.get("tokenizer.ggml.tokens")
    if checked.item_types.get("tokenizer.ggml.tokens") != GGUFValueType.STRING or not tokens:
        raise GGUFCheckError("tokenizer.ggml.tokens is missing or not an array of strings")
    if len(tokens) > MAX_VOCAB:
        raise GGUFCheckError(f"vocabulary of {len(tokens)} tokens exceeds the limit {MAX_VOCAB}")
    if not isinstance(meta.get("tokenizer.ggml.model"), str):
        raise GGUFCheckError("tokenizer.ggml.model is missing")
    for key, item_type in TOKENIZER_ARRAYS.items():
        if key not in meta:
            continue
        if checked.item_types.get(key) != item_type:
            found = checked.item_types.get(key, checked.value_types[key])
            raise GGUFCheckError(f"{key} holds {found.name}, llama.cpp reads {item_type.name}")
        if key != "tokenizer.ggml.merges" and len(meta[key]) != len(tokens):
            raise GGUFCheckError(f"{key} has {len(meta[key])} entries, tokens has {len(tokens)}")
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        for token in tokens:
            if token in seen:
                raise GGUFCheckError(f"token text {token!r} appears more than once (llama.cpp aborts on duplicates)")
            seen.add(token)
    if meta["tokenizer.ggml.model"] == "gpt2" and "tokenizer.ggml.merges" not in meta:
        raise GGUFCheckError("tokenizer.ggml.merges is missing for a BPE (gpt2) tokenizer")
    for name in SPECIAL_ID_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        if key in meta and not (isinstance(meta[key], int) and 0 <= meta[key] < len(tokens)):
            raise GGUFCheckError(f"{key} = {meta[key]!r} is outside the vocabulary (0..{len(tokens) - 1})")
    return len(tokens)
