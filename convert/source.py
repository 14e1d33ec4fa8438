"""Reading a Hugging Face checkpoint: config, tokenizer files, sentence-transformers modules, weights.

Weights are read from safetensors through a read-only memory map, in row chunks, and the pages of
each chunk are handed back to the kernel once converted, so peak memory stays near one chunk plus
its converted copy whatever the model size. The safetensors header is parsed and validated here
(rather than through `safetensors.safe_open`) because the numpy loader has no bfloat16 and keeps
every touched page of the file resident for the life of the handle.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from granite_gguf.errors import UserError
from granite_gguf.files import open_regular, parse_json

MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024
MAX_JSON_FILE_BYTES = 256 * 1024 * 1024
CHUNK_BYTES = 32 * 1024 * 1024

SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
}
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")
HUB_FILE_PATTERNS = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "modules.json",
    "config_sentence_transformers.json", "sentence_bert_config.json", "*/config.json", "README.md", "LICENSE",
]
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives inside a safetensors file."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class Checkpoint:
    """A local checkpoint folder, with its JSON files parsed and its tensor index built."""

    root: Path
    source: str  # what the user named: a folder or a hub repo id
    config: dict[str, Any]
    tokenizer: dict[str, Any]
    tokenizer_config: dict[str, Any]
    special_tokens_map: dict[str, Any]
    modules: list[dict[str, Any]]
    pooling: dict[str, Any] | None
    tensors: dict[str, TensorEntry] = field(default_factory=dict)

    @property
    def has_normalize(self) -> bool:
        return any(m.get("type", "").endswith("models.Normalize") for m in self.modules)

    def license_text(self) -> str | None:
        path = self.root / "LICENSE"
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    def iter_rows(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """Yield the tensor as float32 chunks of whole rows (a 1-D tensor comes in one piece)."""
        entry = self.tensors[name]
        dtype, itemsize = SAFETENSORS_DTYPES[entry.dtype]
        row_elems = int(np.prod(entry.shape[1:])) if len(entry.shape) > 1 else int(np.prod(entry.shape))
        n_rows = entry.shape[0] if len(entry.shape) > 1 else 1
        rows_per_chunk = max(1, chunk_bytes // max(1, row_elems * itemsize))
        with open(entry.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for first in range(0, n_rows, rows_per_chunk):
                count = min(rows_per_chunk, n_rows - first)
                offset = entry.start + first * row_elems * itemsize
                raw = np.frombuffer(mm, dtype=dtype, count=count * row_elems, offset=offset)
                rows = _to_float32(raw, entry.dtype).reshape((count, *entry.shape[1:]) if len(entry.shape) > 1 else entry.shape)
                del raw
                yield rows
                _release_pages(mm, offset, count * row_elems * itemsize)

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 (for small tensors and tests)."""
        return np.concatenate(list(self.iter_rows(name)))


def _to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _release_pages(mm: mmap.mmap, offset: int, length: int) -> None:
    """Drop already-converted file pages from this process's resident set (they stay in the page cache)."""
    page = mmap.PAGESIZE
    start = offset - offset % page
    if hasattr(mm, "madvise") and length > 0:
        mm.madvise(mmap.MADV_DONTNEED, start, min(len(mm) - start, length + (offset - start)))


def open_checkpoint(source: str | os.PathLike[str]) -> Checkpoint:
    """Open a local checkpoint folder, or download a hub repo (safetensors and JSON files only)."""
    text = os.fspath(source)
    root = Path(text)
    if not root.exists():
        if not HUB_REPO_ID.match(text):
            raise UserError(f"{text}: no such checkpoint folder")
        root = _download(text)
    if not root.is_dir():
        raise UserError(f"{text}: expected a checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    config = _read_json(root / "config.json", required=True)
    if not isinstance(config, dict):
        raise UserError(f"{root / 'config.json'}: expected a JSON object")
    modules = _read_json(root / "modules.json") or []
    if not isinstance(modules, list):
        raise UserError(f"{root / 'modules.json'}: expected a JSON list")
    checkpoint = Checkpoint(
        root=root,
        source=text,
        config=config,
        tokenizer=_read_json(root / "tokenizer.json", required=True),
        tokenizer_config=_read_json(root / "tokenizer_config.json") or {},
        special_tokens_map=_read_json(root / "special_tokens_map.json") or {},
        modules=modules,
        pooling=_read_pooling(root, modules),
    )
    checkpoint.tensors = _index_tensors(root)
    return checkpoint


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such model on the hub (or it needs a token)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"{repo_id}: download failed: {exc}") from None


def _read_json(path: Path, required: bool = False) -> Any:
    if not path.is_file():
        if required:
            raise UserError(f"{path}: missing")
        return None
    if path.stat().st_size > MAX_JSON_FILE_BYTES:
        raise UserError(f"{path}: larger than {MAX_JSON_FILE_BYTES >> 20} MiB, refusing to parse")
    with open_regular(path) as handle:
        return parse_json(handle.read(), str(path))


def _read_pooling(root: Path, modules: list[dict[str, Any]]) -> dict[str, Any] | None:
    for module in modules:
        if module.get("type", "").endswith("models.Pooling"):
            folder = str(module.get("path", ""))
            if Path(folder).is_absolute() or ".." in Path(folder).parts:
                raise UserError(f"{root / 'modules.json'}: pooling module path {folder!r} leaves the checkpoint")
            pooling = _read_json(root / folder / "config.json", required=True)
            if not isinstance(pooling, dict):
                raise UserError(f"{root / folder / 'config.json'}: expected a JSON object")
            return pooling
    return None


def _index_tensors(root: Path) -> dict[str, TensorEntry]:
    files = sorted(root.glob("*.safetensors"))
    if not files:
        pickles = [name for name in PICKLE_WEIGHT_FILES if (root / name).exists()]
        if pickles:
            raise UserError(
                f"{root / pickles[0]}: PyTorch pickle checkpoints are not read (they can run code on load); "
                "convert the weights to safetensors first"
            )
        raise UserError(f"{root}: no *.safetensors weights found")
    index_path = root / "model.safetensors.index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise UserError(f"{index_path}: missing 'weight_map'")
        shard_names = set(weight_map.values())
        for shard in shard_names:
            if not isinstance(shard, str) or Path(shard).name != shard or not (root / shard).is_file():
                raise UserError(f"{index_path}: shard {shard!r} missing or outside the checkpoint")
        files = [root / name for name in sorted(shard_names)]
    tensors: dict[str, TensorEntry] = {}
    for path in files:
        for entry in read_safetensors_header(path):
            if entry.name in tensors:
                raise UserError(f"{path}: tensor {entry.name!r} appears in more than one file")
            tensors[entry.name] = entry
    return tensors


def read_safetensors_header(path: Path) -> list[TensorEntry]:
    """Parse and validate a safetensors header: size, JSON, dtypes, shapes and offsets within the file."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError(f"{path}: corrupted safetensors file (shorter than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_SAFETENSORS_HEADER_BYTES or 8 + header_len > size:
            raise UserError(f"{path}: corrupted safetensors file (header length {header_len} for a {size}-byte file)")
        header = parse_json(f.read(header_len), f"{path}: corrupted safetensors file (header)")
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupted safetensors file (header is not a JSON object)")
    data_start = 8 + header_len
    data_size = size - data_start
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries.append(_validate_entry(path, name, info, data_start, data_size))
    return entries


def _validate_entry(path: Path, name: str, info: Any, data_start: int, data_size: int) -> TensorEntry:
    def bad(reason: str) -> UserError:
        return UserError(f"{path}: corrupted safetensors file (tensor {name!r}: {reason})")

    if not isinstance(info, dict):
        raise bad("entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise bad(f"unsupported dtype {dtype!r}; expected one of {', '.join(SAFETENSORS_DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise bad(f"bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise bad(f"bad data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]  # Python ints: no overflow on hostile shapes
    if not 0 <= begin <= end or end - begin != nbytes:
        raise bad(f"data_offsets {offsets} do not hold {nbytes} bytes")
    if end > data_size:
        raise bad(f"data ends at byte {end} but the file holds only {data_size} (truncated file?)")
    return TensorEntry(name, path, dtype, tuple(shape), data_start + begin, nbytes)
