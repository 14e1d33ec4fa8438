"""Remembered checks: a file llama.cpp is about to load is validated once per version of the file.

`check_gguf` reads the whole header in Python, about 0.25 s for a 180,000-token vocabulary and its
merges, a quarter of `granite-gguf embed`'s cold start (docs/performance.md). A pass is written to
the cache folder, keyed by the file's real path, device, inode, size, mtime_ns and ctime_ns, and by
a digest of the checker's code. Any write, rename, `touch` or `utime` moves ctime, which user space
cannot set back, so a changed file is checked again; so is every file after any change to the rules.
What is kept is the checked header without its vocabulary-sized arrays (`without_large_arrays`):
what the Embedder uses, read back in milliseconds. The cache folder is trusted like the install:
whoever can write it can vouch for a file (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType, GGUFValueType

from granite_gguf import __version__
from granite_gguf.errors import UserError
from granite_gguf.files import atomic_output, cache_dir
from granite_gguf.gguf_file.contract import check_gguf
from granite_gguf.gguf_file.header import (
    Header,
    OmittedArray,
    TensorInfo,
    without_large_arrays,
)

log = logging.getLogger(__name__)

MAX_REMEMBERED = 256  # entries kept; the oldest are removed beyond this


def checked_header(path: Path, *, whole: bool = False) -> Header:
    """`path` checked (`check_gguf`) unless a pass is remembered for this very version of it; its header without
    vocabulary-sized arrays. `whole`: always checked, and the header with every array (a remembered pass holds
    none). A pass is remembered for next time either way."""
    before = _identity(path)
    if not whole and before is not None:
        remembered = _recall(path, before)
        if remembered is not None:
            return remembered
    header = check_gguf(path)
    trimmed = without_large_arrays(header)
    if before is not None and _identity(path) == before:  # unchanged while it was read
        _remember(path, before, trimmed)
    return header if whole else trimmed


@dataclass(frozen=True)
class FileIdentity:
    """Which version of which file: equal only for the same file, unchanged (any write, rename, `touch` or `utime`
    moves ctime, which user space cannot set back)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def entry_path(path: Path) -> Path:
    """Where the pass of `path` is remembered: one file per real path."""
    name = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:40]
    return cache_dir() / "checked" / f"{name}.json"


def _identity(path: Path) -> dict[str, Any] | None:
    """What must be equal for a remembered pass to hold; None when the file cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"path": os.path.realpath(path), **asdict(FileIdentity.of(st)), "rules": _rules_digest()}


@cache
def _rules_digest() -> str:
    """sha256 of the tool's version and the code of every module the check runs (this file layer: the parser and
    the contract; the convert package: the architecture units, the tokenizer limits): editing any of them forgets
    all passes."""
    from granite_gguf import convert

    digest = hashlib.sha256(__version__.encode())
    for folder in (Path(__file__).parent, Path(convert.__file__).parent):
        for source in sorted(folder.glob("*.py")):
            digest.update(f"{folder.name}/{source.name}".encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _recall(path: Path, identity: dict[str, Any]) -> Header | None:
    """The remembered header of `path`, if its entry is for exactly `identity`; None otherwise (also for
    an entry that cannot be read: it is only a cache)."""
    try:
        entry = json.loads(entry_path(path).read_text())
        if entry["identity"] != identity:
            return None
        return _header_from_json(path, entry["header"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("%s: remembered check unreadable (%s); checking again", path, exc)
        return None


def _remember(path: Path, identity: dict[str, Any], header: Header) -> None:
    """Write the entry (atomically); a cache that cannot be written is skipped, not an error."""
    target = entry_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            tmp.write_text(json.dumps({"identity": identity, "header": _header_to_json(header)}))
        _forget_oldest(target.parent)
    except (OSError, UserError) as exc:
        log.debug("%s: check not remembered (%s)", path, exc)


def _forget_oldest(folder: Path) -> None:
    entries = sorted(folder.glob("*.json"), key=lambda entry: entry.stat().st_mtime_ns)
    for entry in entries[:max(0, len(entries) - MAX_REMEMBERED)]:
        entry.unlink(missing_ok=True)


def _header_to_json(header: Header) -> dict[str, Any]:
    omitted = {key: len(value) for key, value in header.metadata.items() if isinstance(value, OmittedArray)}
    return {
        "version": header.version,
        "metadata": {key: value for key, value in header.metadata.items() if key not in omitted},
        "omitted": omitted,
        "value_types": {key: int(value_type) for key, value_type in header.value_types.items()},
        "item_types": {key: int(item_type) for key, item_type in header.item_types.items()},
        "tensors": [[t.name, list(t.dims), int(t.ggml_type), t.offset, t.n_bytes] for t in header.tensors],
        "n_tensors": header.n_tensors, "tensor_infos_start": header.tensor_infos_start,
        "tensor_infos_end": header.tensor_infos_end, "data_start": header.data_start,
    }


def _header_from_json(path: Path, data: dict[str, Any]) -> Header:
    metadata = {key: data["metadata"][key] if key in data["metadata"] else OmittedArray(data["omitted"][key])
                for key in data["value_types"]}  # the file's key order
    return Header(
        path=path, version=data["version"], metadata=metadata,
        value_types={key: GGUFValueType(value) for key, value in data["value_types"].items()},
        item_types={key: GGUFValueType(value) for key, value in data["item_types"].items()},
        tensors=[TensorInfo(name, tuple(dims), GGMLQuantizationType(ggml_type), offset, n_bytes)
                 for name, dims, ggml_type, offset, n_bytes in data["tensors"]],
        n_tensors=data["n_tensors"], tensor_infos_start=data["tensor_infos_start"],
        tensor_infos_end=data["tensor_infos_end"], data_start=data["data_start"],
    )
