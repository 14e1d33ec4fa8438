"""Streaming GGUF writer: checkpoint → one .gguf, tensor by tensor, row chunk by row chunk.

The file is written through `atomic_output`, so an interrupted or failed run never leaves a partial
file under the final name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from tqdm import tqdm

from granite_gguf import __version__
from granite_gguf.convert import keys
from granite_gguf.convert.architecture import Spec, for_config
from granite_gguf.convert.source import Checkpoint
from granite_gguf.convert.types import OutType, Writer
from granite_gguf.errors import UserError
from granite_gguf.files import atomic_output
from granite_gguf.gguf_file import load
from granite_gguf.models import recognise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorPlan:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # numpy (rows, cols) or (n,)
    ggml_type: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return int(np.prod(self.shape)) // block * type_size


def plan_tensors(ckpt: Checkpoint, spec: Spec, outtype: OutType) -> list[TensorPlan]:
    """Choose each tensor's storage type: norms stay F32; a row that does not fit the block size falls back to F16."""
    plans = []
    for gguf_name, hf_name in spec.map_tensors(ckpt).items():
        shape = ckpt.tensors[hf_name].shape
        ggml_type = outtype.block_type if len(shape) == 2 else GGMLQuantizationType.F32
        block = GGML_QUANT_SIZES[ggml_type][0]
        if shape[-1] % block:
            log.warning("%s: row length %d is not a multiple of %d; stored as F16", gguf_name, shape[-1], block)
            ggml_type = GGMLQuantizationType.F16
        plans.append(TensorPlan(gguf_name, hf_name, shape, ggml_type))
    return plans


def encode_rows(rows: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """float32 rows → the bytes GGUF stores for `ggml_type`."""
    if ggml_type == GGMLQuantizationType.F32:
        return np.ascontiguousarray(rows, dtype=np.float32)
    if ggml_type == GGMLQuantizationType.F16:
        return rows.astype(np.float16)
    return quantize(np.ascontiguousarray(rows, dtype=np.float32), ggml_type)


def convert(
    ckpt: Checkpoint,
    out_path: Path,
    outtype: OutType,
    *,
    matryoshka_dims: tuple[int, ...] | None = None,
    progress: bool = False,
    progress_label: str | None = None,
) -> Path:
    """Write `ckpt` as a GGUF of its architecture at `out_path` (atomically). Returns the path. The file
    declares `matryoshka_dims`, by default those of the published model `ckpt` is (granite_gguf.models).
    The progress bar is labelled `progress_label`, by default the file name."""
    if outtype.writer is not Writer.GGUF_PY:
        raise UserError(f"{outtype.label} is made by llama.cpp's quantizer: use --quant {outtype.label}")
    architecture = for_config(ckpt.config)
    if matryoshka_dims is None:
        published = recognise(ckpt.source, ckpt.config)
        matryoshka_dims = published.matryoshka_dims if published else ()
    spec = architecture.read_spec(ckpt, matryoshka_dims)
    vocab = architecture.vocab(ckpt)
    plans = plan_tensors(ckpt, spec, outtype)
    with atomic_output(out_path) as tmp_path:
        writer = GGUFWriter(tmp_path, architecture.name)
        write_general(writer, ckpt, spec, outtype)
        spec.write_metadata(writer)
        vocab.write(writer)
        for plan in plans:
            writer.add_tensor_info(plan.gguf_name, plan.shape, np.dtype(np.float32), plan.nbytes, raw_dtype=plan.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None  # set by write_header_to_file
        fout = writer.fout[0]
        writer.write_padding(fout, fout.tell())
        total = sum(plan.nbytes for plan in plans)
        with tqdm(total=total, unit="B", unit_scale=True, desc=progress_label or out_path.name, disable=not progress) as bar:
            for plan in plans:
                written = 0
                for rows in ckpt.iter_rows(plan.hf_name):
                    data = encode_rows(rows, plan.ggml_type)
                    fout.write(data.data.cast("B"))  # no extra copy of the chunk
                    written += data.nbytes
                    bar.update(data.nbytes)
                if written != plan.nbytes:
                    raise RuntimeError(f"{plan.gguf_name}: wrote {written} bytes, planned {plan.nbytes}")
                writer.write_padding(fout, written)
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
    load(out_path)  # our output passes the check before anything loads it, and its first load won't repeat it
    return out_path


def write_general(writer: GGUFWriter, ckpt: Checkpoint, spec: Spec, outtype: OutType) -> None:
    """`general.*` provenance: name, size, license, source, file type."""
    basename = ckpt.source.rstrip("/").rsplit("/", 1)[-1] or ckpt.root.name
    writer.add_name(basename)
    writer.add_basename(basename)
    writer.add_size_label(size_label(spec.parameter_count()))
    writer.add_file_type(outtype.file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_string(keys.CONVERTER_VERSION, __version__)
    if not Path(ckpt.source).exists():
        writer.add_source_repo_url(f"https://huggingface.co/{ckpt.source}")
    license_name = ckpt.config.get("license") or _readme_license(ckpt.root)
    if license_name:
        writer.add_license(license_name)


def size_label(n_params: int) -> str:
    if n_params >= 1e9:
        return f"{n_params / 1e9:.1f}B"
    return f"{round(n_params / 1e6)}M" if n_params >= 1e7 else f"{n_params / 1e6:.1f}M"


def _readme_license(root: Path) -> str | None:
    readme = root / "README.md"
    if not readme.is_file():
        return None
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
        if line.startswith("license:"):
            return line.split(":", 1)[1].strip()
    return None
