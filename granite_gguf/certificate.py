"""The proof travels with the file: a verification certificate in the GGUF's own metadata.

`granite-gguf release` writes into every file that passed verification what was compared and what
came out, under `granite_gguf.certificate.*`: the reference checkpoint and its hub revision or
content hash, the probe set's hash and size, the token limit and the texts cut to it, token
mismatches, cosine min and mean, the threshold, the tool version, and the sha256 of the tensor data.
The header is rewritten into a new file that is renamed into place (`atomic_output`); the tensor
data is copied byte for byte, so its hash stays true, and `granite-gguf check` recomputes it.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

from gguf import GGUFValueType, Keys

from granite_gguf import __version__
from granite_gguf.convert import keys
from granite_gguf.convert.check import DEFAULT_ALIGNMENT, MAGIC, SCALARS, CheckedFile, read_header
from granite_gguf.convert.check_cache import checked_header
from granite_gguf.convert.source import Checkpoint
from granite_gguf.files import atomic_output

CHUNK = 16 << 20  # bytes per read when copying tensor data


@dataclass(frozen=True)
class Certificate:
    """What a released file was verified against, and the result (one GGUF key per field)."""

    label: str  # the type or recipe the file was written as (convert.quantize labels)
    reference: str  # the checkpoint as named: a folder or a hub repo id
    checkpoint: str  # `<repo>@<revision>` for a hub download, else `sha256:<content hash>`
    probe_set: str  # which set: "gate" (release's smaller set) or "full" (the built-in probe set)
    probe_sha256: str  # of the texts (verify.texts_digest)
    probe_texts: int
    token_limit: int  # inputs longer than this were cut to it on both sides, special tokens kept
    texts_cut: int
    token_mismatches: int
    cosine_min: float
    cosine_mean: float
    threshold: float
    result: str  # PASS or FAIL
    tool_version: str
    tensor_sha256: str  # of the tensor data section, as written

    @staticmethod
    def key(name: str) -> str:
        return f"{keys.CERTIFICATE_PREFIX}{name}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_VALUE_TYPES = {str: GGUFValueType.STRING, int: GGUFValueType.UINT32, float: GGUFValueType.FLOAT64}


def read_certificate(header: CheckedFile) -> Certificate | None:
    """The certificate in a file's metadata, or None when it has none (or an incomplete one)."""
    values = {f.name: header.metadata.get(Certificate.key(f.name)) for f in fields(Certificate)}
    if any(value is None for value in values.values()):
        return None
    return Certificate(**cast(dict[str, Any], values))


def tensor_data_sha256(header: CheckedFile) -> str:
    """sha256 of everything from the start of the tensor data section to the end of the file."""
    with header.path.open("rb") as handle:
        handle.seek(header.data_start)
        return hashlib.file_digest(handle, "sha256").hexdigest()


def data_matches(header: CheckedFile, certificate: Certificate) -> bool:
    return tensor_data_sha256(header) == certificate.tensor_sha256


def write_certificate(path: Path, certificate: Certificate) -> None:
    """Put `certificate` into the GGUF at `path` (replacing an earlier one): the keys are written
    anew, the tensor infos and data copied unchanged, into a temporary file renamed over `path`."""
    header = read_header(path)
    entries = [(key, header.value_types[key], value, header.item_types.get(key))
               for key, value in header.metadata.items() if not key.startswith(keys.CERTIFICATE_PREFIX)]
    for name, value in certificate.as_dict().items():
        entries.append((Certificate.key(name), _VALUE_TYPES[type(value)], value, None))
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
    checked_header(path)  # a new file under the old name: checked once now, as `convert` does


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


def checkpoint_identity(ckpt: Checkpoint) -> str:
    """`<repo>@<revision>` for a hub snapshot; else sha256 over the checkpoint folder's files (path
    and content of each, hidden files aside)."""
    if not Path(ckpt.source).exists() and ckpt.root.parent.name == "snapshots":
        return f"{ckpt.source}@{ckpt.root.name}"
    digest = hashlib.sha256()
    for file in sorted(p for p in ckpt.root.rglob("*") if p.is_file()):
        relative = file.relative_to(ckpt.root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"sha256:{digest.hexdigest()}"


def new_certificate(**values: Any) -> Certificate:
    """A certificate stamped with this tool's version."""
    return Certificate(tool_version=__version__, **values)
