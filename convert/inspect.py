"""Reading back what a GGUF holds: metadata, tensor types, tokenizer family (for `inspect` and the bindings)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType, LlamaFileType, PoolingType

from granite_gguf.convert import keys
from granite_gguf.errors import UserError


@dataclass
class GGUFSummary:
    path: Path
    metadata: dict[str, Any]
    tensor_types: Counter[str] = field(default_factory=Counter)  # type name → tensor count
    tensor_bytes: Counter[str] = field(default_factory=Counter)  # type name → bytes
    tensor_elements: Counter[str] = field(default_factory=Counter)  # type name → parameters

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.metadata.get('general.architecture')}.{key}", default)

    @property
    def pooling(self) -> str:
        value = self.arch_value("pooling_type")
        return PoolingType(value).name if value is not None else "unspecified"

    @property
    def file_type(self) -> str:
        value = self.metadata.get("general.file_type")
        return LlamaFileType(value).name if value is not None else "unknown"

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        return tuple(self.metadata.get(keys.MATRYOSHKA_DIMS, ()))

    @property
    def normalize(self) -> bool:
        return bool(self.metadata.get(keys.NORMALIZE, False))


def read_summary(path: Path, with_vocab: bool = False) -> GGUFSummary:
    """Metadata as Python values (token arrays only if `with_vocab`), and tensor types by count and bytes."""
    try:
        reader = GGUFReader(path)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise UserError(f"{path}: not a readable GGUF file ({exc})") from None
    metadata: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if not with_vocab and name in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
            metadata[name] = f"[{len(fld.data)} entries]"
            continue
        metadata[name] = _field_value(fld)
    summary = GGUFSummary(Path(path), metadata)
    for tensor in reader.tensors:
        summary.tensor_types[tensor.tensor_type.name] += 1
        summary.tensor_bytes[tensor.tensor_type.name] += int(tensor.n_bytes)
        summary.tensor_elements[tensor.tensor_type.name] += int(tensor.n_elements)
    return summary


def _field_value(fld: Any) -> Any:
    if fld.types and fld.types[0] == GGUFValueType.ARRAY:
        return [_scalar(fld.parts[i], fld.types[-1]) for i in fld.data]
    return _scalar(fld.parts[fld.data[0]], fld.types[0])


def _scalar(part: Any, value_type: GGUFValueType) -> Any:
    if value_type == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    value = part.tolist()[0]
    return bool(value) if value_type == GGUFValueType.BOOL else value
