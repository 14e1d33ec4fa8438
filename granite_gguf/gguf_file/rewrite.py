"""Rewriting the keys of a GGUF atomically: the keys written anew, the tensor infos and data copied byte for byte,
into a temporary file beside it that is renamed over it (`files.atomic_output`). Used by the certificate writer
and by tests that plant hostile values."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, Keys

from granite_gguf.files import atomic_output
from granite_gguf.gguf_file.header import DEFAULT_ALIGNMENT, MAGIC, SCALARS, Header

CHUNK = 16 << 20  # bytes per read when copying tensor data


KeyEntry = tuple[str, GGUFValueType, Any, "GGUFValueType | None"]  # key, value type, value, item type (arrays)


def key_entries(header: Header) -> list[KeyEntry]:
    """Every key of a header read whole (`read_header`), as `rewrite_keys` writes them."""
    return [(key, header.value_types[key], value, header.item_types.get(key)) for key, value in header.metadata.items()]


def rewrite_keys(path: Path, header: Header, entries: list[KeyEntry]) -> None:
    """Replace the keys of the GGUF at `path` (whose header is `header`) by `entries`; the tensor infos and data are
    copied unchanged, into a temporary file renamed over `path`. Not checked: the caller checks what it wrote."""
    alignment = header.metadata.get(Keys.General.ALIGNMENT, DEFAULT_ALIGNMENT)
    with atomic_output(path) as tmp, path.open("rb") as source, tmp.open("wb") as out:
        out.write(MAGIC + struct.pack("<IQQ", header.version, len(header.tensors), len(entries)))
        for key, value_type, value, item_type in entries:
            out.write(_string(key) + struct.pack("<I", value_type) + _value(value_type, value, item_type))
        source.seek(header.tensor_infos_start)
        out.write(source.read(header.tensor_infos_end - header.tensor_infos_start))
        out.write(b"\0" * (-out.tell() % alignment))
        source.seek(header.data_start)
        shutil.copyfileobj(source, out, CHUNK)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _value(value_type: GGUFValueType, value: Any, item_type: GGUFValueType | None) -> bytes:
    if value_type in SCALARS:
        return struct.pack(SCALARS[value_type], value)
    if value_type == GGUFValueType.STRING:
        return _string(value)
    assert item_type is not None, "an array has an item type"
    head = struct.pack("<IQ", item_type, len(value))
    if item_type in SCALARS:
        return head + struct.pack(f"<{len(value)}{SCALARS[item_type][1]}", *value)
    return head + b"".join(_value(item_type, item, None) for item in value)
