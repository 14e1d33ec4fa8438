"""Reading back what a GGUF holds: metadata, tensor types, tokenizer family (for `inspect` and the bindings)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf import Keys, LlamaFileType, PoolingType

from granite_gguf.convert import keys

if TYPE_CHECKING:
    from granite_gguf.gguf_file.header import Header


VOCAB_ARRAYS = (Keys.Tokenizer.LIST, Keys.Tokenizer.TOKEN_TYPE, Keys.Tokenizer.MERGES)


@dataclass
class GGUFSummary:
    path: Path
    metadata: dict[str, Any]
    tensor_types: Counter[str] = field(default_factory=Counter)  # type name → tensor count
    tensor_bytes: Counter[str] = field(default_factory=Counter)  # type name → bytes
    tensor_elements: Counter[str] = field(default_factory=Counter)  # type name → parameters

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.metadata.get(Keys.General.ARCHITECTURE)}.{key}", default)

    @property
    def pooling(self) -> str:
        value = self.arch_value("pooling_type")
        return PoolingType(value).name if value is not None else "unspecified"

    @property
    def file_type(self) -> LlamaFileType | None:
        value = self.metadata.get(Keys.General.FILE_TYPE)
        return LlamaFileType(value) if value is not None else None

    @property
    def file_type_name(self) -> str:
        """For people: `MOSTLY_Q8_0`, or `unknown` when the file does not say."""
        return self.file_type.name if self.file_type is not None else "unknown"

    @property
    def matryoshka_dims(self) -> tuple[int, ...]:
        return tuple(self.metadata.get(keys.MATRYOSHKA_DIMS, ()))

    @property
    def normalize(self) -> bool:
        return bool(self.metadata.get(keys.NORMALIZE, False))


def read_summary(path: Path, with_vocab: bool = False) -> GGUFSummary:
    """Metadata as Python values (token arrays only if `with_vocab`), and tensor types by count and bytes."""
    from granite_gguf.gguf_file.header import read_header

    return summarize(read_header(Path(path)), with_vocab)


def summarize(header: Header, with_vocab: bool = False) -> GGUFSummary:
    """The summary of a header already read (by `check_gguf` or `read_header`): no second parse."""
    metadata = {
        name: f"[{len(value)} entries]" if not with_vocab and name in VOCAB_ARRAYS else value
        for name, value in header.metadata.items()
    }
    summary = GGUFSummary(header.path, metadata)
    for tensor in header.tensors:
        name = tensor.ggml_type.name
        summary.tensor_types[name] += 1
        summary.tensor_bytes[name] += tensor.n_bytes
        summary.tensor_elements[name] += math.prod(tensor.dims)
    return summary
