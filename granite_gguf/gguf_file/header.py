"""The bounded GGUF header parser: keys, values and tensor infos of any GGUF, validated structurally.

Not gguf-py's reader, which maps whole arrays at once: every count and length is checked against the
bytes left in the file before anything is read or allocated, and each tensor's offset and size must lie
within the data section. What a model file must hold besides is the contract's (contract.py). Limits and
reasons: docs/security.md.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys

from granite_gguf.errors import UserError
from granite_gguf.files import open_regular

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_TENSORS = 65_536
MAX_KEYS = 65_536
MAX_KEY_BYTES = 1_024
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 16 * 1024 * 1024

MAX_DIMS = 4
LARGE_ARRAY_ITEMS = 1_024  # longer arrays are vocabulary-sized (tokens, scores, types, merges)
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1
DEFAULT_ALIGNMENT = 32

SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
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
class Header:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    value_types: dict[str, GGUFValueType] = field(default_factory=dict)
    item_types: dict[str, GGUFValueType] = field(default_factory=dict)  # for arrays
    tensors: list[TensorInfo] = field(default_factory=list)
    n_tensors: int = 0
    tensor_infos_start: int = 0  # byte offsets of the tensor infos (after the keys)
    tensor_infos_end: int = 0
    data_start: int = 0  # byte offset of the tensor data section (offsets in TensorInfo are relative to it)


@dataclass(frozen=True)
class OmittedArray:
    """An array value a header does not hold (`without_large_arrays`): only its length is kept."""

    length: int

    def __len__(self) -> int:
        return self.length


def without_large_arrays(header: Header) -> Header:
    """`header` with its vocabulary-sized arrays replaced by `OmittedArray`: what loading a file needs once
    it is checked (the 360,000 strings of a 180,000-token vocabulary and its merges are about 40 MiB)."""
    metadata = {key: OmittedArray(len(value)) if isinstance(value, list) and len(value) > LARGE_ARRAY_ITEMS
                else value for key, value in header.metadata.items()}
    return replace(header, metadata=metadata)


class _Reader:
    """Little-endian reads that never go past the end of the file."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
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


def read_header(path: Path) -> Header:
    """Keys, values and tensor infos of any GGUF, bounded and validated structurally (no model checks).

    Also what `inspect` reads: much faster than gguf-py's reader on large vocabularies (a 262k-token
    file in about a second instead of twenty).
    """
    try:
        with open_regular(path) as handle:
            return _read_header(_Reader(handle, os.fstat(handle.fileno()).st_size), path)
    except OSError as exc:
        raise GGUFCheckError(f"{path}: cannot read ({exc.strerror})") from None
    except GGUFCheckError as exc:
        raise GGUFCheckError(f"{path}: {exc}") from None
    except UserError as exc:  # not a regular file: already names it
        raise GGUFCheckError(str(exc)) from None


def read_keys(handle: IO[bytes], size: int, path: Path) -> Header:
    """Only the keys and values at the start of a GGUF stream of `size` bytes (no tensor infos), bounded
    like `read_header`: for the first part of a file split in pieces, whose tensor data is elsewhere."""
    try:
        return _read_keys(_Reader(handle, size), path)
    except GGUFCheckError as exc:
        raise GGUFCheckError(f"{path}: {exc}") from None


def _read_header(reader: _Reader, path: Path) -> Header:
    """Keys, values and tensor infos, each bounded by the bytes left; tensor data within the file."""
    checked = _read_keys(reader, path)
    n_tensors = checked.n_tensors
    alignment = checked.metadata.get(Keys.General.ALIGNMENT, DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFCheckError(f"{Keys.General.ALIGNMENT} {alignment!r} is not a power of two")
    names: set[str] = set()
    for index in range(n_tensors):
        tensor = _tensor_info(reader, index)
        if tensor.name in names:
            raise GGUFCheckError(f"tensor {tensor.name!r} appears twice")
        names.add(tensor.name)
        checked.tensors.append(tensor)
    checked.tensor_infos_end = reader.handle.tell()
    data_start = checked.data_start = -(-checked.tensor_infos_end // alignment) * alignment
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


def _read_keys(reader: _Reader, path: Path) -> Header:
    """Magic, version, counts, then every key and value, each bounded by the bytes left."""
    magic = reader.take(4, "magic") if reader.left() >= 4 else b""
    if magic != MAGIC:
        raise GGUFCheckError("not a GGUF file (bad magic)")
    version = reader.scalar("<I", "version")
    if version not in VERSIONS:
        raise GGUFCheckError(f"GGUF version {version} is not supported (only {', '.join(map(str, VERSIONS))})")
    n_tensors, n_keys = reader.scalar("<Q", "tensor count"), reader.scalar("<Q", "key count")
    if n_tensors > MAX_TENSORS or n_keys > MAX_KEYS:
        raise GGUFCheckError(f"{n_tensors} tensors / {n_keys} keys exceed the limits ({MAX_TENSORS} / {MAX_KEYS})")
    checked = Header(path, version)
    for _ in range(n_keys):
        key = reader.string("key", MAX_KEY_BYTES)
        if key in checked.metadata:
            raise GGUFCheckError(f"key {key!r} appears twice")
        value_type = _value_type(reader.scalar("<I", key), key)
        checked.value_types[key] = value_type
        checked.metadata[key] = _value(reader, value_type, key, checked.item_types)
    checked.tensor_infos_start = reader.handle.tell()
    checked.n_tensors = n_tensors
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
