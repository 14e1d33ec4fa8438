"""Every output type in one table: its label, llama.cpp file type, expected GGML types, writer and parity gate.

Plain types (f32, f16, bf16, q8_0) are streamed by convert/writer.py with gguf-py's numpy quantizers;
every other llama.cpp type, and the embedding-aware recipes, come from llama.cpp's own quantizer
(convert/quantize.py). A recipe is a stock type with another type for the token embedding table
(`llama_model_quantize_params.token_embedding_type`): the table is ~2/3 of the 311m's parameters, so
its precision and the blocks' can be traded separately. Adding a type or moving a gate is one row here.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from gguf import GGMLQuantizationType, LlamaFileType

from granite_gguf.errors import UserError

Q = GGMLQuantizationType
F = LlamaFileType


class Writer(Enum):
    """What writes a single file of the type (a `--quant` set makes every type but f32 with llama.cpp)."""

    GGUF_PY = "gguf-py"  # `convert --outtype`: streamed, row chunk by row chunk
    LLAMA_CPP = "llama.cpp"  # `llama_model_quantize`, from an F32 GGUF


class OutType(Enum):
    """label, file type, type of most 2-D tensors, a recipe's token table type, writer, minimum cosine.

    Gates of the plain types (TEI and vLLM gate at 0.999): f32 leaves only llama.cpp's arithmetic,
    f16 an 11-bit mantissa, bf16 an 8-bit one, q8_0 8-bit blocks of 32; measured in docs/parity.md.
    Gates of llama.cpp's types and the recipes are 1 - 1.25 x (1 - the worst minimum measured over
    the three tiny fixtures), rounded down (q6_k, all Q8_0 there, takes q8_0's): regression floors for
    the fixtures (hidden 64, K-quants fall back to Q5_0/Q5_1/Q8_0; weights scaled to amplify errors),
    not quality claims for the full-size models (docs/quality.md). None: no gate, pass --threshold.
    Types that need an importance matrix (IQ1/IQ2/IQ3_XXS) are left out: without one llama.cpp
    refuses or produces garbage.
    """

    F32 = ("f32", F.ALL_F32, Q.F32, None, Writer.GGUF_PY, 0.99999)
    F16 = ("f16", F.MOSTLY_F16, Q.F16, None, Writer.GGUF_PY, 0.9999)
    BF16 = ("bf16", F.MOSTLY_BF16, Q.BF16, None, Writer.GGUF_PY, 0.999)
    Q8_0 = ("q8_0", F.MOSTLY_Q8_0, Q.Q8_0, None, Writer.GGUF_PY, 0.998)
    Q4_0 = ("q4_0", F.MOSTLY_Q4_0, Q.Q4_0, None, Writer.LLAMA_CPP, 0.770)
    Q4_1 = ("q4_1", F.MOSTLY_Q4_1, Q.Q4_1, None, Writer.LLAMA_CPP, None)
    Q5_0 = ("q5_0", F.MOSTLY_Q5_0, Q.Q5_0, None, Writer.LLAMA_CPP, None)
    Q5_1 = ("q5_1", F.MOSTLY_Q5_1, Q.Q5_1, None, Writer.LLAMA_CPP, None)
    Q2_K = ("q2_k", F.MOSTLY_Q2_K, Q.Q2_K, None, Writer.LLAMA_CPP, None)
    Q3_K_S = ("q3_k_s", F.MOSTLY_Q3_K_S, Q.Q3_K, None, Writer.LLAMA_CPP, None)
    Q3_K_M = ("q3_k_m", F.MOSTLY_Q3_K_M, Q.Q3_K, None, Writer.LLAMA_CPP, None)
    Q3_K_L = ("q3_k_l", F.MOSTLY_Q3_K_L, Q.Q3_K, None, Writer.LLAMA_CPP, None)
    Q4_K_S = ("q4_k_s", F.MOSTLY_Q4_K_S, Q.Q4_K, None, Writer.LLAMA_CPP, 0.922)
    Q4_K_M = ("q4_k_m", F.MOSTLY_Q4_K_M, Q.Q4_K, None, Writer.LLAMA_CPP, 0.954)
    Q5_K_S = ("q5_k_s", F.MOSTLY_Q5_K_S, Q.Q5_K, None, Writer.LLAMA_CPP, None)
    Q5_K_M = ("q5_k_m", F.MOSTLY_Q5_K_M, Q.Q5_K, None, Writer.LLAMA_CPP, 0.956)
    Q6_K = ("q6_k", F.MOSTLY_Q6_K, Q.Q6_K, None, Writer.LLAMA_CPP, 0.998)
    IQ4_NL = ("iq4_nl", F.MOSTLY_IQ4_NL, Q.IQ4_NL, None, Writer.LLAMA_CPP, 0.771)
    IQ4_XS = ("iq4_xs", F.MOSTLY_IQ4_XS, Q.IQ4_XS, None, Writer.LLAMA_CPP, None)
    # Embedding-aware recipes. llama.cpp already stores the table of a model without an output tensor
    # as Q6_K in every type below Q8_0 (Q8_0 where rows of 384 or 64 do not fit Q6_K). Presets: a
    # smaller table with precise blocks, and everything 4-bit (Q4_0 fits every row length, so also the
    # 97m's). Each is on the Pareto front of size, speed and cosine in docs/quality.md. Measured and
    # dropped: a Q8_0 table with Q4_K_M blocks (larger and worse than q6_k on the 311m), and the speed
    # recipes iq4_nl+emb_q8_0 and q4_0+emb_q8_0 (repacked 4-bit blocks, precise table): on the 311m
    # larger, no faster and less precise than q6_k; on the 97m the same files as stock iq4_nl and q4_0.
    Q8_0_EMB_Q4_K = ("q8_0+emb_q4_k", F.MOSTLY_Q8_0, Q.Q8_0, Q.Q4_K, Writer.LLAMA_CPP, 0.972)
    Q6_K_EMB_Q4_K = ("q6_k+emb_q4_k", F.MOSTLY_Q6_K, Q.Q6_K, Q.Q4_K, Writer.LLAMA_CPP, 0.972)
    Q4_0_EMB_Q4_0 = ("q4_0+emb_q4_0", F.MOSTLY_Q4_0, Q.Q4_0, Q.Q4_0, Writer.LLAMA_CPP, 0.674)

    def __init__(self, label: str, file_type: LlamaFileType, block_type: GGMLQuantizationType,
                 table_type: GGMLQuantizationType | None, writer: Writer, min_cosine: float | None) -> None:
        self.label = label
        self.file_type = file_type
        self.block_type = block_type  # the type most 2-D tensors should have (a recipe's table aside)
        self.table_type = table_type  # a recipe's token embedding table type; None: the type's own rule
        self.writer = writer
        self.min_cosine = min_cosine

    @property
    def is_recipe(self) -> bool:
        return self.table_type is not None

    @property
    def base(self) -> OutType:
        """The stock type behind a recipe (itself for a stock type)."""
        return self.for_file_type(self.file_type) or self

    @property
    def file_label(self) -> str:
        return file_label(self.label)

    @classmethod
    def for_file_type(cls, file_type: int | None) -> OutType | None:
        """The stock type that writes `general.file_type` (recipes share their base's)."""
        return next((t for t in cls if t.file_type == file_type and not t.is_recipe), None)

    @classmethod
    def written_by(cls, writer: Writer) -> list[OutType]:
        return [t for t in cls if t.writer is writer]

    @classmethod
    def parse(cls, text: str, writer: Writer | None = None) -> OutType:
        """One label (`--outtype`); `writer` limits the choice to the types it writes."""
        return _lookup([text.strip()], cls.written_by(writer) if writer else list(cls), "output type")[0]

    @classmethod
    def parse_list(cls, text: str) -> list[OutType]:
        """Comma-separated labels (`--quant`), case-insensitive, duplicates dropped."""
        return list(dict.fromkeys(_lookup([part.strip() for part in text.split(",") if part.strip()], list(cls), "type")))


def file_label(label: str) -> str:
    """A label as it appears in file names (`+` is awkward in URLs and model names)."""
    return label.replace("+", "-")


def _lookup(labels: Sequence[str], choices: Sequence[OutType], what: str) -> list[OutType]:
    by_label = {t.label: t for t in choices}
    unknown = [label for label in labels if label.lower() not in by_label]
    if unknown or not labels:
        shown = ", ".join(repr(label) for label in unknown) or "''"
        raise UserError(f"unknown {what} {shown}; choose from {', '.join(by_label)}")
    return [by_label[label.lower()] for label in labels]
