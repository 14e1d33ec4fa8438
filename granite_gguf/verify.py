"""Parity: a GGUF against the PyTorch reference (sentence-transformers, fp32) on the probe set.

Two checks. Tokens: the ids HF `tokenizers` gives must equal llama.cpp's for every probe, special
tokens included. Vectors: per text, cosine between the reference and llama.cpp vectors; the minimum
over the set must reach the gate of the type or recipe the file was written as (`OutType.min_cosine`,
convert/types.py); NMSE is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.convert.check import CheckedFile
from granite_gguf.convert.inspect import summarize
from granite_gguf.convert.quantize import written_type
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.errors import UserError
from granite_gguf.probes import probe_texts


@dataclass
class ParityReport:
    gguf: str
    file_type: str
    threshold: float
    n_texts: int
    max_tokens: int
    token_mismatches: int
    cosine_min: float
    cosine_mean: float
    nmse: float
    worst_text: str
    mismatch_examples: list[dict[str, object]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.token_mismatches == 0 and self.cosine_min >= self.threshold

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}

    def table(self) -> str:
        rows = [
            ("file", Path(self.gguf).name), ("type", self.file_type), ("texts", str(self.n_texts)),
            ("longest input (tokens)", str(self.max_tokens)), ("token mismatches", str(self.token_mismatches)),
            ("cosine min", f"{self.cosine_min:.7f}"), ("cosine mean", f"{self.cosine_mean:.7f}"),
            ("NMSE", f"{self.nmse:.3e}"), ("threshold (min cosine)", f"{self.threshold}"),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@dataclass
class Reference:
    """What the PyTorch side says about a probe set: token ids (HF tokenizers) and vectors."""

    source: str
    texts: list[str]
    token_ids: list[list[int]]
    vectors: np.ndarray

    @property
    def longest(self) -> int:
        return max(len(ids) for ids in self.token_ids)


def run_reference(source: str, texts: Sequence[str] | None = None) -> Reference:
    """Tokenize and embed `texts` (default: the built-in probe set) with the checkpoint's HF pipeline."""
    from tokenizers import Tokenizer

    texts = list(probe_texts() if texts is None else texts)
    ckpt = open_checkpoint(source)
    hf_tokenizer = Tokenizer.from_file(str(ckpt.root / "tokenizer.json"))
    token_ids = [encoding.ids for encoding in hf_tokenizer.encode_batch(texts)]
    vectors = reference_vectors(ckpt.root, texts, max_tokens=max(len(ids) for ids in token_ids))
    return Reference(source, texts, token_ids, vectors)


def compare(reference: Reference, gguf_path: Path, threshold: float | None = None) -> ParityReport:
    """Run `gguf_path` through llama.cpp on the reference's texts and measure the differences."""
    texts = reference.texts
    with Embedder(gguf_path, max_tokens=reference.longest) as embedder:
        if threshold is None:
            threshold = default_threshold(embedder.header)
        mismatches = []
        for index, (text, ids) in enumerate(zip(texts, reference.token_ids)):
            ours = embedder.tokenize(text)
            if ours != ids:
                mismatches.append({"index": index, "text": text[:80], "hf": ids[:16], "llama_cpp": ours[:16]})
        vectors = embedder.encode(texts)
    cosines = np.sum(reference.vectors * vectors, axis=1)
    squared_error = np.sum((reference.vectors - vectors) ** 2, axis=1)
    nmse = float(np.mean(squared_error) / np.mean(np.sum(reference.vectors**2, axis=1)))
    worst = int(np.argmin(cosines))
    return ParityReport(
        gguf=str(gguf_path), file_type=embedder.summary.file_type_name, threshold=threshold, n_texts=len(texts),
        max_tokens=reference.longest, token_mismatches=len(mismatches), cosine_min=float(cosines[worst]),
        cosine_mean=float(np.mean(cosines)), nmse=nmse, worst_text=texts[worst][:80], mismatch_examples=mismatches[:5],
    )


def default_threshold(header: CheckedFile) -> float:
    """The minimum cosine a file must reach: that of the type or recipe it was written as."""
    output = written_type(header)
    if output is None or output.min_cosine is None:
        file_type = summarize(header).file_type_name
        raise UserError(f"{header.path}: no parity threshold for file type {file_type}; pass --threshold")
    return output.min_cosine


def reference_vectors(folder: Path, texts: Sequence[str], max_tokens: int) -> np.ndarray:
    """L2-normalized fp32 vectors from the sentence-transformers pipeline of the checkpoint."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    model.max_seq_length = max_tokens
    with torch.inference_mode():
        vectors = model.encode(list(texts), batch_size=8, convert_to_numpy=True, normalize_embeddings=True)
    return vectors.astype(np.float32)
