"""Every llama.cpp quantization type, through llama.cpp's own quantizer (`llama_model_quantize`).

`convert_set` reads the checkpoint once into an F32 GGUF (kept only as a temporary file unless f32 is
asked for) and derives each requested type from it. K-quants need rows that are a multiple of 256:
with hidden 384 the 97m falls back to other types, so each file's *effective* types are measured and
a file that is mostly not what its name says gets a truthful name and a warning.

Recipes (RECIPES) are a stock llama.cpp type with another type for the token embedding table
(`llama_model_quantize_params.token_embedding_type`): the table is ~2/3 of the 311m's parameters, so
its precision and the blocks' can be traded separately. A recipe label such as `q8_0+emb_q4_k` is
accepted wherever a type is; its file is named with `-` for `+` (`<model>-q8_0-emb_q4_k.gguf`), and
its truthful name is judged on the tensors other than the table, plus the table's own type. llama.cpp
does not apply its fallback (rows that are not a multiple of the block) to this override but aborts
the process, so the fallback is applied here first (hidden 384: Q4_K → Q5_0, …) and named.
Measured quality and size of every type and recipe: docs/quality.md.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from tqdm import tqdm

from granite_gguf.convert.source import Checkpoint
from granite_gguf.convert.writer import OutType, convert
from granite_gguf.convert.check import CheckedFile, check_gguf, read_header
from granite_gguf.errors import UserError
from granite_gguf.files import atomic_output, held, remove_stale_temporaries

log = logging.getLogger(__name__)

# label → (llama_ftype, the GGML type most 2-D tensors should have). Types that need an importance
# matrix (IQ1/IQ2/IQ3_XXS) are left out: without one llama.cpp refuses or produces garbage.
LLAMA_TYPES: dict[str, tuple[int, str]] = {
    "f32": (0, "F32"), "f16": (1, "F16"), "bf16": (32, "BF16"), "q8_0": (7, "Q8_0"),
    "q4_0": (2, "Q4_0"), "q4_1": (3, "Q4_1"), "q5_0": (8, "Q5_0"), "q5_1": (9, "Q5_1"),
    "q2_k": (10, "Q2_K"), "q3_k_s": (11, "Q3_K"), "q3_k_m": (12, "Q3_K"), "q3_k_l": (13, "Q3_K"),
    "q4_k_s": (14, "Q4_K"), "q4_k_m": (15, "Q4_K"), "q5_k_s": (16, "Q5_K"), "q5_k_m": (17, "Q5_K"),
    "q6_k": (18, "Q6_K"), "iq4_nl": (25, "IQ4_NL"), "iq4_xs": (30, "IQ4_XS"),
}

TOKEN_EMBEDDING = "token_embd.weight"


@dataclass(frozen=True)
class Recipe:
    base: str  # a LLAMA_TYPES label: the ftype, and the type most other 2-D tensors should have
    token_embedding: GGMLQuantizationType  # the type of the token embedding table


# Embedding-aware presets. llama.cpp already stores the table of a model without an output tensor
# as Q6_K in every type below Q8_0 (Q8_0 where rows of 384 or 64 do not fit Q6_K). Presets: a smaller
# table with precise blocks (the 311m's table is 2/3 of it), and everything 4-bit (Q4_0 fits every
# row length, so also the 97m's). Each is on the Pareto front of size and cosine in docs/quality.md;
# a Q8_0 table with Q4_K_M blocks was measured and dropped (larger and worse than q6_k on the 311m).
RECIPES: dict[str, Recipe] = {
    "q8_0+emb_q4_k": Recipe("q8_0", GGMLQuantizationType.Q4_K),
    "q6_k+emb_q4_k": Recipe("q6_k", GGMLQuantizationType.Q4_K),
    "q4_0+emb_q4_0": Recipe("q4_0", GGMLQuantizationType.Q4_0),
}

# Minimum cosine against the fp32 reference on the tiny fixtures (all probes), per type or recipe:
# 1 - 1.25 x (1 - the worst minimum measured over the three fixtures), rounded down; f16 and q8_0 (and
# q6_k, all Q8_0 there) use verify's gates instead. Measured values: docs/quality.md. The fixtures have
# hidden 64 (K-quants fall back to Q5_0/Q5_1/Q8_0) and weights scaled to amplify errors: these bounds
# are regression floors for the fixtures, not quality claims for the full-size models.
QUANT_THRESHOLDS: dict[str, float] = {
    "f16": 0.9999, "q8_0": 0.998, "q6_k": 0.998, "q5_k_m": 0.956, "q4_k_m": 0.954, "q4_0": 0.770,
    "q8_0+emb_q4_k": 0.972, "q6_k+emb_q4_k": 0.972, "q4_0+emb_q4_0": 0.674,
}

# llama.cpp's replacement for a type whose block does not divide the row length (llama-quant.cpp);
# F16 when the replacement does not fit either.
_FALLBACK = {
    GGMLQuantizationType.Q2_K: GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.Q3_K: GGMLQuantizationType.IQ4_NL,
    GGMLQuantizationType.IQ4_XS: GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.Q4_K: GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_K: GGMLQuantizationType.Q5_1, GGMLQuantizationType.Q6_K: GGMLQuantizationType.Q8_0,
}


@dataclass(frozen=True)
class QuantizedFile:
    label: str  # what was asked for
    path: Path
    dominant_type: str  # the GGML type holding most parameters of the 2-D tensors (a recipe's table aside)
    truthful: bool
    table_type: str | None = None  # a recipe's token embedding table type, as written


def parse_types(text: str) -> list[str]:
    labels = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [label for label in labels if label not in LLAMA_TYPES and label not in RECIPES]
    if unknown or not labels:
        raise UserError(f"unknown type {', '.join(unknown) or text!r}; choose from {', '.join([*LLAMA_TYPES, *RECIPES])}")
    return list(dict.fromkeys(labels))


def base_type(label: str) -> str:
    """The LLAMA_TYPES label behind a type or recipe label."""
    return RECIPES[label].base if label in RECIPES else label


def file_label(label: str) -> str:
    """The label as it appears in file names (`+` is awkward in URLs and model names)."""
    return label.replace("+", "-")


def convert_set(ckpt: Checkpoint, outdir: Path, labels: list[str], *, model_name: str, progress: bool = False,
                matryoshka_dims: tuple[int, ...] | None = None) -> list[QuantizedFile]:
    """Write `<model_name>-<label>.gguf` (`+` written `-`) for every label in `outdir`, reading the checkpoint once."""
    if not outdir.is_dir():
        raise UserError(f"{outdir}: no such directory")
    source = outdir / f"{model_name}-f32.gguf"
    keep_source = "f32" in labels
    intermediate = source if keep_source else outdir / f".{model_name}-f32.{os.getpid()}.source.tmp"
    stale = f".{glob.escape(model_name)}-f32.*.source.tmp"  # a killed set's intermediate (and its temporary)
    remove_stale_temporaries(outdir, stale)
    remove_stale_temporaries(outdir, f".{stale}.*.tmp")
    results = []
    try:
        convert(ckpt, intermediate, OutType.F32, matryoshka_dims=matryoshka_dims, progress=progress,
                progress_label=f"{model_name} (f32, read once)")
        with held(intermediate):  # in use: another set's clean-up must leave it
            for label in [l for l in labels if l != "f32"]:
                dest = outdir / f"{model_name}-{file_label(label)}.gguf"
                results.append(quantize_file(intermediate, dest, label, progress=progress))
    finally:
        if not keep_source:
            intermediate.unlink(missing_ok=True)
    if keep_source:
        results.insert(labels.index("f32"), describe(source, "f32"))
    return results


def quantize_file(source: Path, dest: Path, label: str, nthread: int | None = None, *,
                  progress: bool = False) -> QuantizedFile:
    """One llama.cpp quantization, atomically, with a progress bar over its tensors; the result is
    renamed if its name would not be true."""
    import llama_cpp

    ftype, _ = LLAMA_TYPES[base_type(label)]
    checked = check_gguf(source)  # llama.cpp's quantizer aborts on some malformed files
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if label in RECIPES:
        params.token_embedding_type = _table_type(checked, RECIPES[label].token_embedding).value
    params.nthread = nthread or os.cpu_count() or 1
    with atomic_output(dest) as tmp, tqdm(desc=dest.name, unit="tensor", disable=not progress) as bar:
        with _llama_log_to(bar) as errors:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            detail = f": {errors[-1]}" if errors else ""
            raise UserError(f"{dest.name}: llama.cpp's quantizer failed (status {status}){detail}")
    result = describe(dest, label)
    if not result.truthful:
        actual = result.dominant_type.lower()
        if result.table_type is not None and result.table_type != RECIPES[label].token_embedding.name:
            actual += f"+emb_{result.table_type.lower()}"
        truthful = dest.with_name(f"{dest.stem}-mostly-{file_label(actual)}.gguf")
        os.replace(dest, truthful)
        log.warning("%s: asked for %s but most weights are %s (see `granite-gguf inspect`); named %s",
                    dest.name, label, actual.upper(), truthful.name)
        result = QuantizedFile(label, truthful, result.dominant_type, False, result.table_type)
    return result


_TENSOR_LINE = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")  # llama.cpp's quantizer logs "[  12/ 200] blk.0.… " per tensor
_LOG_ERROR = 3  # GGML_LOG_LEVEL_ERROR


@contextmanager
def _llama_log_to(bar: tqdm) -> Iterator[list[str]]:
    """Take llama.cpp's log while it quantizes: its per-tensor lines move `bar`, error lines are kept
    (yielded) for the error message, the rest is dropped. llama-cpp-python's own log callback is
    put back afterwards."""
    import llama_cpp
    import llama_cpp._logger

    errors: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        tensor = _TENSOR_LINE.match(text)
        if tensor:
            bar.total = int(tensor[2])
            bar.update(int(tensor[1]) - bar.n)
        elif level == _LOG_ERROR:
            errors.append(text.decode(errors="replace").strip())

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        yield errors
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


def written_label(header: CheckedFile) -> str | None:
    """The type or recipe label a file was written as, read back from its file type and the type of
    its token embedding table (a recipe's table, or its fallback for these rows); None when no label
    writes this file type."""
    file_type = header.metadata.get("general.file_type")
    base = next((label for label, (ftype, _) in LLAMA_TYPES.items() if ftype == file_type), None)
    if base is None:
        return None
    table = next((t.ggml_type for t in header.tensors if t.name == TOKEN_EMBEDDING), None)
    if table is None:
        return base
    for label, recipe in RECIPES.items():
        if recipe.base == base and table == _table_type(header, recipe.token_embedding):
            return label
    return base


def _table_type(source: CheckedFile, wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """`wanted`, or llama.cpp's fallback for it when the token embedding rows do not fit its blocks."""
    row = next(t.dims[0] for t in source.tensors if t.name == TOKEN_EMBEDDING)
    for candidate in (wanted, _FALLBACK.get(wanted, GGMLQuantizationType.F16), GGMLQuantizationType.F16):
        if row % GGML_QUANT_SIZES[candidate][0] == 0:
            return candidate
    raise AssertionError("F16 fits every row")


def describe(path: Path, label: str) -> QuantizedFile:
    """Measure which GGML type holds most of the weights (norms and other F32 vectors aside; for a
    recipe, the token embedding table aside too: its type is checked on its own)."""
    recipe = RECIPES.get(label)
    weights: Counter[str] = Counter()
    table = None
    for tensor in read_header(path).tensors:
        if recipe is not None and tensor.name == TOKEN_EMBEDDING:
            table = tensor.ggml_type.name
        elif tensor.ggml_type.name != "F32" or label == "f32":
            weights[tensor.ggml_type.name] += math.prod(tensor.dims)
    dominant = max(weights, key=weights.__getitem__)
    truthful = dominant == LLAMA_TYPES[base_type(label)][1] and (recipe is None or table == recipe.token_embedding.name)
    return QuantizedFile(label, path, dominant, truthful, table)
