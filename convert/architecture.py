"""What convert/ and the checker need from an architecture unit, and the list of units.

An architecture unit (convert/modern_bert.py is the one there is) plays the part of ollama's
convert/ `ModelConverter`: the metadata it writes (KV), the tensors it emits and their names. The
writer picks the unit by config.json's `architectures`, the checker by `general.architecture`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGUFWriter

from granite_gguf.errors import UserError

if TYPE_CHECKING:
    from granite_gguf.convert.source import Checkpoint

KeyKind = Literal["size", "int", "float", "bool", "string"]  # "size": a positive integer below 2**24


@dataclass(frozen=True)
class KeyRule:
    """A key llama.cpp reads when it loads or runs the model, and the values it survives: outside them it
    aborts the process (a GGML_ASSERT) or computes garbage, so the checker refuses the file."""

    kind: KeyKind
    allowed: Callable[[Any, Mapping[str, Any]], bool]  # (value, the file's metadata) → acceptable
    expect: str  # what `allowed` accepts, for the message


@dataclass(frozen=True)
class Dimensions:
    """The sizes that fix every tensor shape of an encoder (with the vocabulary size)."""

    hidden: int
    intermediate: int  # per GLU half for gated FFNs (ModernBERT's Wi has 2 * intermediate rows)
    layers: int
    heads: int


class Spec(Protocol):
    """One checkpoint's hyper-parameters, as the unit read them."""

    @property
    def dims(self) -> Dimensions: ...

    @property
    def context_length(self) -> int: ...

    def write_metadata(self, writer: GGUFWriter) -> None: ...

    def map_tensors(self, ckpt: Checkpoint) -> dict[str, str]:
        """GGUF name → checkpoint name of every tensor the file holds, in file order."""
        ...

    def parameter_count(self) -> int: ...


class Vocab(Protocol):
    """A checkpoint's vocabulary, as the architecture's `vocab` hook read it."""

    def write(self, writer: GGUFWriter) -> None:
        """The `tokenizer.ggml.*` keys."""
        ...


@dataclass(frozen=True)
class Architecture:
    """One encoder family: how to read its checkpoints and what a GGUF of it must hold."""

    arch: MODEL_ARCH
    hf_model_type: str  # config.json `model_type`
    hf_architectures: tuple[str, ...]  # config.json `architectures` it converts
    read_spec: Callable[[Checkpoint, tuple[int, ...]], Spec]  # (checkpoint, Matryoshka dimensions to declare)
    vocab: Callable[[Checkpoint], Vocab]  # as llama.cpp's converter has set_vocab
    required_keys: Mapping[str, KeyKind]  # GGUF keys llama.cpp's loader needs
    key_rules: Mapping[str, KeyRule]  # every key llama.cpp reads for this architecture, checked when present
    dimensions_from_metadata: Callable[[Mapping[str, Any]], Dimensions]  # from already type-checked metadata
    tensor_shapes: Callable[[Dimensions, int], dict[str, tuple[int, ...]]]  # (dimensions, vocab) → GGUF name → numpy shape

    @property
    def name(self) -> str:
        """`general.architecture`, from gguf-py."""
        return MODEL_ARCH_NAMES[self.arch]


def registered() -> tuple[Architecture, ...]:
    """Every unit; adding an encoder adds its module here. Imported late: the units import this module."""
    from granite_gguf.convert.modern_bert import MODERN_BERT

    return (MODERN_BERT,)


def for_config(config: Mapping[str, Any]) -> Architecture:
    """The unit that converts a checkpoint with this config.json, or a UserError naming what is supported."""
    architectures = config.get("architectures")
    names = [str(a) for a in architectures] if isinstance(architectures, list) else []
    for unit in registered():
        if config.get("model_type") == unit.hf_model_type and any(name in unit.hf_architectures for name in names):
            return unit
    named = ", ".join(names) or str(config.get("model_type") or "unknown")
    supported = ", ".join(name for unit in registered() for name in unit.hf_architectures)
    raise UserError(f"config.json: unsupported architecture {named}; only {supported} convert")


def for_gguf(name: object) -> Architecture | None:
    """The unit whose files have `general.architecture` = `name`."""
    return next((unit for unit in registered() if unit.name == name), None)
