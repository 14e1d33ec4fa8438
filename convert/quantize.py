"""Every llama.cpp quantization type, through llama.cpp's own quantizer (`llama_model_quantize`).

`convert_set` reads the checkpoint once into an F32 GGUF (kept only as a temporary file unless f32 is
asked for) and derives each requested type from it. K-quants need rows that are a multiple of 256:
with hidden 384 the 97m falls back to other types, so each file's *effective* types are measured and
a file that is mostly not what its name says gets a truthful name and a warning.

Recipes (convert/types.py) are a stock llama.cpp type with another type for the token embedding
table. A recipe label such as `q8_0+emb_q4_k` is accepted wherever a type is; its file is named with
`-` for `+` (`<model>-q8_0-emb_q4_k.gguf`), and its truthful name is judged on the tensors other than the table, plus the table's own type. llama.cpp
does not apply its fallback (rows that are not a multiple of the block) to this override but aborts
the process, so the fallback is applied here first (hidden 384: Q4_K → Q5_0, …) and named.
Measured quality and size of every type and recipe: docs/quality.md.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys
from tqdm import tqdm

from granite_gguf import llama_backend
from granite_gguf.convert.source import Checkpoint
from granite_gguf.convert.types import OutType, file_label
from granite_gguf.convert.writer import convert
from granite_gguf.errors import UserError
from granite_gguf.files import atomic_output, held, remove_stale_temporaries
from granite_gguf.gguf_file import Header, load

log = logging.getLogger(__name__)

TOKEN_EMBEDDING = "token_embd.weight"

# llama.cpp's replacement for a type whose block does not divide the row length (llama-quant.cpp);
# F16 when the replacement does not fit either.
_FALLBACK = {
    GGMLQuantizationType.Q2_K: GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.Q3_K: GGMLQuantizationType.IQ4_NL,
    GGMLQuantizationType.IQ4_XS: GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.Q4_K: GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_K: GGMLQuantizationType.Q5_1, GGMLQuantizationType.Q6_K: GGMLQuantizationType.Q8_0,
}


@dataclass(frozen=True)
class QuantizedFile:
    output: OutType  # what was asked for
    path: Path
    dominant_type: GGMLQuantizationType  # the type holding most parameters of the 2-D tensors (a recipe's table aside)
    truthful: bool
    table_type: GGMLQuantizationType | None = None  # a recipe's token embedding table type, as written


def convert_set(ckpt: Checkpoint, outdir: Path, outputs: list[OutType], *, model_name: str, progress: bool = False,
                matryoshka_dims: tuple[int, ...] | None = None) -> list[QuantizedFile]:
    """Write `<model_name>-<label>.gguf` (`+` written `-`) for every type in `outdir`, reading the checkpoint once."""
    if not outdir.is_dir():
        raise UserError(f"{outdir}: no such directory")
    source = outdir / f"{model_name}-f32.gguf"
    keep_source = OutType.F32 in outputs
    intermediate = source if keep_source else outdir / f".{model_name}-f32.{os.getpid()}.source.tmp"
    stale = f".{glob.escape(model_name)}-f32.*.source.tmp"  # a killed set's intermediate (and its temporary)
    remove_stale_temporaries(outdir, stale)
    remove_stale_temporaries(outdir, f".{stale}.*.tmp")
    results = []
    try:
        convert(ckpt, intermediate, OutType.F32, matryoshka_dims=matryoshka_dims, progress=progress,
                progress_label=f"{model_name} (f32, read once)")
        with held(intermediate):  # in use: another set's clean-up must leave it
            for output in [o for o in outputs if o is not OutType.F32]:
                dest = outdir / f"{model_name}-{output.file_label}.gguf"
                results.append(quantize_file(intermediate, dest, output, progress=progress))
    finally:
        if not keep_source:
            intermediate.unlink(missing_ok=True)
    if keep_source:
        results.insert(outputs.index(OutType.F32), describe(source, OutType.F32))
    return results


def quantize_file(source: Path, dest: Path, output: OutType, nthread: int | None = None, *,
                  progress: bool = False) -> QuantizedFile:
    """One llama.cpp quantization, atomically, with a progress bar over its tensors; the result is
    renamed if its name would not be true."""
    # llama.cpp's quantizer aborts on some malformed files: it reads the very file that was checked
    checked = load(source)
    with checked.opened() as load_path, atomic_output(dest) as tmp, \
            tqdm(desc=dest.name, unit="tensor", disable=not progress) as bar:
        table = _table_type(checked.header, output.table_type).value if output.table_type is not None else None

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        failure = llama_backend.quantize(load_path, str(tmp), file_type=output.file_type.value,
                                         threads=nthread or os.cpu_count() or 1, token_embedding_type=table,
                                         progress=advance)
        if failure is not None:
            raise UserError(f"{dest.name}: llama.cpp's quantizer failed ({failure})")
    result = describe(dest, output)
    if not result.truthful:
        actual = result.dominant_type.name.lower()
        if result.table_type is not None and result.table_type != output.table_type:
            actual += f"+emb_{result.table_type.name.lower()}"
        truthful = dest.with_name(f"{dest.stem}-mostly-{file_label(actual)}.gguf")
        os.replace(dest, truthful)
        log.warning("%s: asked for %s but most weights are %s (see `granite-gguf inspect`); named %s",
                    dest.name, output.label, actual.upper(), truthful.name)
        result = QuantizedFile(output, truthful, result.dominant_type, False, result.table_type)
    load(result.path)  # as `convert` does: checked once now, not at its first load (renamed: again)
    return result


def written_type(header: Header) -> OutType | None:
    """The type or recipe a file was written as, read back from its file type and the type of its
    token embedding table (a recipe's table, or its fallback for these rows); None when no type in
    the table writes this file type."""
    base = OutType.for_file_type(header.metadata.get(Keys.General.FILE_TYPE))
    if base is None:
        return None
    table = next((t.ggml_type for t in header.tensors if t.name == TOKEN_EMBEDDING), None)
    if table is None:
        return base
    for recipe in OutType:
        if recipe.table_type is not None and recipe.base is base and table == _table_type(header, recipe.table_type):
            return recipe
    return base


def _table_type(source: Header, wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """`wanted`, or llama.cpp's fallback for it when the token embedding rows do not fit its blocks."""
    row = next(t.dims[0] for t in source.tensors if t.name == TOKEN_EMBEDDING)
    for candidate in (wanted, _FALLBACK.get(wanted, GGMLQuantizationType.F16), GGMLQuantizationType.F16):
        if row % GGML_QUANT_SIZES[candidate][0] == 0:
            return candidate
    raise AssertionError("F16 fits every row")


def describe(path: Path, output: OutType) -> QuantizedFile:
    """Measure which GGML type holds most of the weights (norms and other F32 vectors aside; for a
    recipe, the token embedding table aside too: its type is checked on its own). The file is checked
    as it is read (a pass remembered: its first load, and `quantize_file`'s final check, reuse it)."""
    weights: Counter[GGMLQuantizationType] = Counter()
    table = None
    for tensor in load(path).header.tensors:
        if output.is_recipe and tensor.name == TOKEN_EMBEDDING:
            table = tensor.ggml_type
        elif tensor.ggml_type != GGMLQuantizationType.F32 or output is OutType.F32:
            weights[tensor.ggml_type] += math.prod(tensor.dims)
    dominant = max(weights, key=weights.__getitem__)
    truthful = dominant == output.block_type and table == output.table_type
    return QuantizedFile(output, path, dominant, truthful, table)
