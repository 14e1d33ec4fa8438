"""The output-type table (convert/types.py) against llama.cpp's own constants, and what reads it back (fast tier)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from granite_gguf.convert.quantize import TOKEN_EMBEDDING, written_type
from granite_gguf.convert.types import OutType, Writer
from granite_gguf.convert.writer import encode_rows
from granite_gguf.errors import UserError
from granite_gguf.gguf_file.header import Header, TensorInfo
from granite_gguf.gguf_file.summary import summarize
from granite_gguf.modelfiles.modelfile import file_type_label
from granite_gguf.verify import default_threshold

Q = GGMLQuantizationType


@pytest.mark.parametrize("output", list(OutType))
def test_file_types_are_llama_cpps(output: OutType) -> None:
    """The ftype llama.cpp's quantizer is given is the one llama.h names for the type."""
    assert output.file_type.value == getattr(llama_cpp, f"LLAMA_FTYPE_{output.file_type.name}")
    assert output.block_type.name in output.file_type.name  # MOSTLY_Q4_K_M holds Q4_K blocks


def test_labels_are_unique_and_stock_types_own_their_file_type() -> None:
    assert len({t.label for t in OutType}) == len(OutType)
    for output in OutType:
        if output.is_recipe:
            assert output.base is not output and not output.base.is_recipe
            assert output.label.startswith(output.base.label + "+emb_")
            assert output.table_type is not None and output.label.endswith(output.table_type.name.lower())
        else:
            assert OutType.for_file_type(output.file_type) is output and output.base is output


def test_gguf_py_writes_exactly_the_plain_types() -> None:
    plain = OutType.written_by(Writer.GGUF_PY)
    assert [t.label for t in plain] == ["f32", "f16", "bf16", "q8_0"]
    rows = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    for output in plain:
        block, size = GGML_QUANT_SIZES[output.block_type]
        assert encode_rows(rows, output.block_type).nbytes == rows.size // block * size


def test_plain_gates_tighten_with_precision() -> None:
    gates = [t.min_cosine for t in OutType.written_by(Writer.GGUF_PY)]
    floats = [gate for gate in gates if gate is not None]
    assert floats == gates == sorted(floats, reverse=True) and floats[0] == 0.99999


def test_one_parser_for_outtype_and_quant() -> None:
    assert OutType.parse(" Q8_0 ") is OutType.Q8_0
    assert OutType.parse("q4_k_m") is OutType.Q4_K_M
    assert OutType.parse_list("q4_0, F16,q4_0,,Q8_0+EMB_Q4_K") == [OutType.Q4_0, OutType.F16, OutType.Q8_0_EMB_Q4_K]
    with pytest.raises(UserError, match=r"unknown output type 'q4_k_m'; choose from f32, f16, bf16, q8_0$"):
        OutType.parse("q4_k_m", Writer.GGUF_PY)
    with pytest.raises(UserError, match="unknown type 'q9', 'x'; choose from f32, f16"):
        OutType.parse_list("q8_0,q9,x")
    with pytest.raises(UserError, match="unknown type"):
        OutType.parse_list(" , ")
    assert OutType.Q6_K_EMB_Q4_K.file_label == "q6_k-emb_q4_k"


def header(file_type: int | None, table: GGMLQuantizationType | None, row: int = 64) -> Header:
    tensors = [TensorInfo("blk.0.attn_qkv.weight", (row, 3 * row), Q.Q8_0, 0, 0)]
    if table is not None:
        tensors.append(TensorInfo(TOKEN_EMBEDDING, (row, 100), table, 0, 0))
    metadata = {} if file_type is None else {"general.file_type": file_type}
    return Header(Path("x.gguf"), 3, metadata, tensors=tensors)


@pytest.mark.parametrize(("file_type", "table", "row", "expected"), [
    (LlamaFileType.MOSTLY_Q8_0, Q.Q8_0, 64, OutType.Q8_0),
    (LlamaFileType.MOSTLY_Q8_0, Q.Q4_K, 256, OutType.Q8_0_EMB_Q4_K),
    (LlamaFileType.MOSTLY_Q8_0, Q.Q5_0, 64, OutType.Q8_0_EMB_Q4_K),  # rows of 64: Q4_K falls back to Q5_0
    (LlamaFileType.MOSTLY_Q8_0, Q.Q5_0, 256, OutType.Q8_0),  # rows of 256 fit Q4_K: Q5_0 is no recipe
    (LlamaFileType.MOSTLY_Q4_0, Q.Q4_0, 64, OutType.Q4_0_EMB_Q4_0),
    (LlamaFileType.MOSTLY_Q4_0, Q.Q6_K, 256, OutType.Q4_0),
    (LlamaFileType.MOSTLY_Q4_0, Q.Q8_0, 64, OutType.Q4_0),  # stock q4_0 where rows do not fit Q6_K
    (LlamaFileType.MOSTLY_IQ4_NL, Q.Q6_K, 256, OutType.IQ4_NL),
    (LlamaFileType.MOSTLY_F16, None, 64, OutType.F16),
    (LlamaFileType.MOSTLY_IQ2_XXS, Q.Q8_0, 64, None),
])
def test_written_type_is_read_back_from_file_type_and_table(file_type: LlamaFileType, table: GGMLQuantizationType | None,
                                                            row: int, expected: OutType | None) -> None:
    assert written_type(header(file_type, table, row)) is expected


def test_verify_gate_and_ollama_label_come_from_the_table() -> None:
    recipe = header(LlamaFileType.MOSTLY_Q8_0, Q.Q5_0)
    assert default_threshold(recipe) == 0.972
    assert default_threshold(header(LlamaFileType.ALL_F32, Q.F32)) == 0.99999
    assert file_type_label(summarize(recipe)) == "q8_0"
    assert file_type_label(summarize(header(LlamaFileType.MOSTLY_Q4_K_M, Q.Q6_K))) == "q4_k_m"
    with pytest.raises(UserError, match="no parity threshold for file type MOSTLY_Q3_K_M; pass --threshold"):
        default_threshold(header(LlamaFileType.MOSTLY_Q3_K_M, Q.Q6_K))
    with pytest.raises(UserError, match="file type unknown is not one granite-gguf writes"):
        file_type_label(summarize(header(None, Q.F16)))
