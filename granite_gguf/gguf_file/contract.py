"""The contract a GGUF must meet before llama.cpp sees it: llama.cpp aborts the process on some malformed files.

On a header the bounded parser read (header.py), the contract of its architecture unit: required keys and
their types, the hyperparameter rules, tokenizer arrays of equal length with unique texts (duplicates abort
llama.cpp 0.3.36), special ids in range, every tensor the metadata implies with that shape, and the 1-D
tensors F32 and finite. Limits and reasons: docs/security.md.

The per-architecture facts (keys, rules, tensor shapes) are the architecture unit's, the one place that also
writes them; so this module reads the unit registry (convert.architecture) and the tokenizer's limit, and
nothing else of the converter (docs/architecture.md, "Floors").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, Keys

from granite_gguf.convert import keys
from granite_gguf.convert.architecture import KeyKind, for_gguf, registered
from granite_gguf.convert.tokenizer import MAX_VOCAB
from granite_gguf.files import open_regular
from granite_gguf.gguf_file.header import GGUFCheckError, Header, TensorInfo, read_header

INTEGER_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
                 GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
MAX_SIZE = 1 << 24  # bound on a "size" key (context, widths, layer and head counts)
KIND_TYPES: dict[KeyKind, set[GGUFValueType]] = {
    "size": INTEGER_TYPES, "int": INTEGER_TYPES, "float": {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64},
    "bool": {GGUFValueType.BOOL}, "string": {GGUFValueType.STRING},
}
TOKENIZER_ARRAYS = {
    Keys.Tokenizer.TOKEN_TYPE: GGUFValueType.INT32, Keys.Tokenizer.SCORES: GGUFValueType.FLOAT32,
    Keys.Tokenizer.MERGES: GGUFValueType.STRING,
}
TOKENIZER_MODEL = "gpt2"  # llama.cpp's other vocabularies (SPM, WPM, UGM) have their own asserts, not audited
SPECIAL_ID_KEYS = (Keys.Tokenizer.BOS_ID, Keys.Tokenizer.EOS_ID, Keys.Tokenizer.UNK_ID, Keys.Tokenizer.SEP_ID,
                   Keys.Tokenizer.PAD_ID, keys.CLS_ID, Keys.Tokenizer.MASK_ID)


def check_gguf(path: Path) -> Header:
    """Read and validate `path`; raise GGUFCheckError with the first problem found."""
    checked = read_header(path)
    try:
        _check_model(checked)
    except GGUFCheckError as exc:
        raise GGUFCheckError(f"{path}: {exc}") from None
    return checked


def _check_model(checked: Header) -> None:
    meta = checked.metadata
    arch = meta.get(Keys.General.ARCHITECTURE)
    architecture = for_gguf(arch)
    if architecture is None:
        names = ", ".join(unit.name for unit in registered())
        raise GGUFCheckError(f"architecture {arch!r}; only {names} files are checked and run by granite-gguf")
    for key, kind in architecture.required_keys.items():
        _check_key(checked, key, kind)
    dims = architecture.dimensions_from_metadata(meta)
    if dims.hidden % dims.heads:
        raise GGUFCheckError("embedding_length is not a multiple of attention.head_count")
    for key, rule in architecture.key_rules.items():
        if key in meta:
            _check_key(checked, key, rule.kind)
            if not rule.allowed(meta[key], meta):
                raise GGUFCheckError(f"{key} = {meta[key]!r}: llama.cpp needs {rule.expect}")
    n_vocab = _check_vocab(checked)
    expected = architecture.tensor_shapes(dims, n_vocab)
    found = {tensor.name: tensor for tensor in checked.tensors}
    for name, shape in expected.items():
        if name not in found:
            raise GGUFCheckError(f"tensor {name} is missing")
        if found[name].dims != tuple(reversed(shape)):
            raise GGUFCheckError(f"tensor {name} has shape {list(found[name].dims)}, the metadata implies "
                                 f"{list(reversed(shape))}")
    _check_vectors(checked, [found[name] for name, shape in expected.items() if len(shape) == 1])


def _check_vectors(checked: Header, vectors: list[TensorInfo]) -> None:
    """The 1-D tensors (norm weights: a few thousand values in all) are F32 and finite. llama.cpp multiplies
    F32 activations by them and aborts on any other type (ggml-cpu binary_op: "unsupported types"); a NaN
    there makes every vector NaN. The matrices (hundreds of MiB) are not read: the Embedder refuses a
    non-finite vector instead."""
    with open_regular(checked.path) as handle:
        for tensor in vectors:
            if tensor.ggml_type != GGMLQuantizationType.F32:
                raise GGUFCheckError(f"tensor {tensor.name} is {tensor.ggml_type.name}; llama.cpp needs 1-D tensors in F32")
            handle.seek(checked.data_start + tensor.offset)
            values = np.frombuffer(handle.read(tensor.n_bytes), dtype="<f4")
            if not np.isfinite(values).all():
                raise GGUFCheckError(f"tensor {tensor.name} holds NaN or infinite values")


def _check_key(checked: Header, key: str, kind: KeyKind) -> None:
    """`key` is present and holds a value of `kind`."""
    if key not in checked.metadata:
        raise GGUFCheckError(f"required key {key} is missing")
    value_type = checked.value_types[key]
    if value_type not in KIND_TYPES[kind]:
        raise GGUFCheckError(f"key {key} has type {value_type.name}, expected {'int' if kind == 'size' else kind}")
    if kind == "size" and not 0 < checked.metadata[key] < MAX_SIZE:
        raise GGUFCheckError(f"{key} = {checked.metadata[key]} is out of range")


def _check_vocab(checked: Header) -> int:
    """Token arrays of one length, unique texts, special ids in range; returns the vocabulary size."""
    meta = checked.metadata
    tokens = meta.get(Keys.Tokenizer.LIST)
    if checked.item_types.get(Keys.Tokenizer.LIST) != GGUFValueType.STRING or not tokens:
        raise GGUFCheckError(f"{Keys.Tokenizer.LIST} is missing or not an array of strings")
    if len(tokens) > MAX_VOCAB:
        raise GGUFCheckError(f"vocabulary of {len(tokens)} tokens exceeds the limit {MAX_VOCAB}")
    if meta.get(Keys.Tokenizer.MODEL) != TOKENIZER_MODEL:
        raise GGUFCheckError(f"{Keys.Tokenizer.MODEL} = {meta.get(Keys.Tokenizer.MODEL)!r}; only {TOKENIZER_MODEL!r} (BPE), "
                             "the vocabulary granite-gguf writes, is checked")
    for flag, special in ((Keys.Tokenizer.ADD_BOS, Keys.Tokenizer.BOS_ID), (Keys.Tokenizer.ADD_EOS, Keys.Tokenizer.EOS_ID)):
        if meta.get(flag, True) is not False and special not in meta:
            raise GGUFCheckError(f"{flag} is true or absent but {special} is missing (llama.cpp asserts on a missing "
                                 "special token when it adds one)")
    for key, item_type in TOKENIZER_ARRAYS.items():
        if key not in meta:
            continue
        if checked.item_types.get(key) != item_type:
            found = checked.item_types.get(key, checked.value_types[key])
            raise GGUFCheckError(f"{key} holds {found.name}, llama.cpp reads {item_type.name}")
        if key != Keys.Tokenizer.MERGES and len(meta[key]) != len(tokens):
            raise GGUFCheckError(f"{key} has {len(meta[key])} entries, tokens has {len(tokens)}")
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        for token in tokens:
            if token in seen:
                raise GGUFCheckError(f"token text {token!r} appears more than once (llama.cpp aborts on duplicates)")
            seen.add(token)
    if meta[Keys.Tokenizer.MODEL] == "gpt2" and Keys.Tokenizer.MERGES not in meta:
        raise GGUFCheckError(f"{Keys.Tokenizer.MERGES} is missing for a BPE (gpt2) tokenizer")
    for key in SPECIAL_ID_KEYS:
        if key in meta and not (isinstance(meta[key], int) and 0 <= meta[key] < len(tokens)):
            raise GGUFCheckError(f"{key} = {meta[key]!r} is outside the vocabulary (0..{len(tokens) - 1})")
    return len(tokens)
