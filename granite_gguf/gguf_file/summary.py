"""What a GGUF header says, for people (`render`: `granite-gguf inspect`) and programs (the Embedder, Modelfiles,
the ollama store): metadata, tensor types by count and bytes, pooling, file type, Matryoshka dims."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf import Keys, LlamaFileType, PoolingType

from granite_gguf.convert import keys
from granite_gguf.gguf_file.header import Header, OmittedArray

if TYPE_CHECKING:
    from granite_gguf.gguf_file import GGUFFile


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


def summarize(header: Header) -> GGUFSummary:
    """The summary of a header already read: no second parse. Vocabulary arrays (and any array the header does
    not hold, `OmittedArray`) appear as their length, `[N entries]`."""
    metadata = {
        name: f"[{len(value)} entries]" if name in VOCAB_ARRAYS or isinstance(value, OmittedArray) else value
        for name, value in header.metadata.items()
    }
    summary = GGUFSummary(header.path, metadata)
    for tensor in header.tensors:
        name = tensor.ggml_type.name
        summary.tensor_types[name] += 1
        summary.tensor_bytes[name] += tensor.n_bytes
        summary.tensor_elements[name] += math.prod(tensor.dims)
    return summary


def render(file: GGUFFile, certificate: list[str]) -> str:
    """What `granite-gguf inspect` prints: the facts a reader looks for first, the lines of the certificate
    (`certificate`, from `certificate.describe`), then every key but the certificate's."""
    summary, meta = file.summary, file.summary.metadata
    lines = [
        f"file          {file.path} ({file.identity.size / 2**20:.1f} MiB)",
        f"architecture  {meta.get(Keys.General.ARCHITECTURE)}   file type {summary.file_type_name}",
        f"pooling       {summary.pooling}   normalize {summary.normalize}   matryoshka {list(summary.matryoshka_dims) or 'none'}",
        f"tokenizer     {meta.get(keys.TOKENIZER_FAMILY, '?')} (pre {meta.get(Keys.Tokenizer.PRE)}), "
        f"add_bos {meta.get(Keys.Tokenizer.ADD_BOS)}, add_eos {meta.get(Keys.Tokenizer.ADD_EOS)}",
    ]
    if keys.DROPPED_MERGES in meta:
        lines.append(f"merges        {len(file.header.metadata.get(Keys.Tokenizer.MERGES, []))}, "
                     f"{meta[keys.DROPPED_MERGES]} of the tokenizer's left out (they can never apply)")
    lines.append("tensor types  " + ", ".join(f"{name} ×{count} ({summary.tensor_bytes[name] / 2**20:.2f} MiB)"
                                              for name, count in summary.tensor_types.most_common()))
    lines += [("certificate" if index == 0 else "").ljust(14) + line for index, line in enumerate(certificate)]
    lines.append("metadata:")
    lines += [f"  {key} = {value}" for key, value in meta.items() if not key.startswith(keys.CERTIFICATE_PREFIX)]
    return "\n".join(lines)
