"""Every llama.cpp quantization type, through llama.cpp's own quantizer (`llama_model_quantize`).

`convert_set` reads the checkpoint once into an F32 GGUF (kept only as a temporary file unless f32 is
asked for) and derives each requested type from it. K-quants need rows that are a multiple of 256:
with hidden 384 the 97m falls back to other types, so each file's *effective* types are measured and
a file that is mostly not what its name says gets a truthful name and a warning.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from granite_gguf.convert.inspect import read_summary
from granite_gguf.convert.source import Checkpoint
from granite_gguf.convert.writer import OutType, convert
from granite_gguf.convert.check import check_gguf
from granite_gguf.errors import UserError
from granite_gguf.files import atomic_output

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


@dataclass(frozen=True)
class QuantizedFile:
    label: str  # what was asked for
    path: Path
    dominant_type: str  # the GGML type holding most parameters of the 2-D tensors
    truthful: bool


def parse_types(text: str) -> list[str]:
    labels = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [label for label in labels if label not in LLAMA_TYPES]
    if unknown or not labels:
        raise UserError(f"unknown type {', '.join(unknown) or text!r}; choose from {', '.join(LLAMA_TYPES)}")
    return list(dict.fromkeys(labels))


def convert_set(ckpt: Checkpoint, outdir: Path, labels: list[str], *, model_name: str, progress: bool = False,
                matryoshka_dims: tuple[int, ...] | None = None) -> list[QuantizedFile]:
    """Write `<model_name>-<label>.gguf` for every label in `outdir`, reading the checkpoint once."""
    if not outdir.is_dir():
        raise UserError(f"{outdir}: no such directory")
    source = outdir / f"{model_name}-f32.gguf"
    keep_source = "f32" in labels
    intermediate = source if keep_source else outdir / f".{model_name}-f32.{os.getpid()}.source.tmp"
    convert(ckpt, intermediate, OutType.F32, matryoshka_dims=matryoshka_dims, progress=progress)
    results = []
    try:
        for label in tqdm([l for l in labels if l != "f32"], desc="quantizing", unit="file", disable=not progress):
            results.append(quantize_file(intermediate, outdir / f"{model_name}-{label}.gguf", label))
    finally:
        if not keep_source:
            intermediate.unlink(missing_ok=True)
    if keep_source:
        results.insert(labels.index("f32"), describe(source, "f32"))
    return results


def quantize_file(source: Path, dest: Path, label: str, nthread: int | None = None) -> QuantizedFile:
    """One llama.cpp quantization, atomically; the result is renamed if its name would not be true."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    ftype, _ = LLAMA_TYPES[label]
    check_gguf(source)  # llama.cpp's quantizer aborts on some malformed files
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread or os.cpu_count() or 1
    with atomic_output(dest) as tmp:
        with suppress_stdout_stderr(disable=False):  # llama.cpp prints a line per tensor
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            raise UserError(f"{dest.name}: llama.cpp's quantizer failed (status {status})")
    result = describe(dest, label)
    if not result.truthful:
        truthful = dest.with_name(f"{dest.stem}-mostly-{result.dominant_type.lower()}.gguf")
        os.replace(dest, truthful)
        log.warning("%s: asked for %s but most weights are %s (see `granite-gguf inspect`); named %s",
                    dest.name, label, result.dominant_type, truthful.name)
        result = QuantizedFile(label, truthful, result.dominant_type, False)
    return result


def describe(path: Path, label: str) -> QuantizedFile:
    """Measure which GGML type holds most of the weights (norms and other F32 vectors aside)."""
    summary = read_summary(path)
    weights = {name: count for name, count in summary.tensor_elements.items() if name != "F32" or label == "f32"}
    dominant = max(weights, key=weights.__getitem__)
    return QuantizedFile(label, path, dominant, dominant == LLAMA_TYPES[label][1])
