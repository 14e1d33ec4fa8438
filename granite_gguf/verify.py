"""Parity: a GGUF against the PyTorch reference (sentence-transformers, fp32) on the probe set.

Two checks. Tokens: the ids HF `tokenizers` gives must equal llama.cpp's for every probe, special
tokens included. Vectors: per text, cosine between the reference and llama.cpp vectors; the minimum
over the set must reach the gate of the type or recipe the file was written as (`OutType.min_cosine`,
convert/types.py); NMSE is reported.

Like is compared with like: every text is tokenized once on each side, cut to the same limit (the
smallest of the checkpoint's context, its sentence-transformers `max_seq_length` and the Embedder's
pooling cap) with the special tokens kept, and both sides embed exactly those ids. The texts that
were cut are counted and named in the report. `measure` is the one measurement, shared by `verify`,
`release` and scripts/quality_table.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from granite_gguf.bindings.embedder import Embedder, cut_tokens
from granite_gguf.convert.architecture import for_config
from granite_gguf.convert.quantize import written_type
from granite_gguf.convert.source import Checkpoint, open_checkpoint
from granite_gguf.convert.tokenizer import template_specials
from granite_gguf.errors import UserError
from granite_gguf.gguf_file import Header
from granite_gguf.gguf_file.summary import summarize
from granite_gguf.probes import probe_texts

REFERENCE_BATCH = 8  # sequences per PyTorch forward pass
N_EXAMPLES = 5  # mismatching and cut texts shown per report
TEXT_HEAD = 80  # characters of a text shown in a report


@dataclass
class Reference:
    """What the PyTorch side says about a set of texts: HF token ids, and the vectors of those ids cut
    to `limit` (special tokens kept)."""

    source: str
    texts: list[str]
    token_ids: list[list[int]]  # as HF tokenizers gives them, uncut
    limit: int  # the most tokens an input may have; longer ones are cut to it
    vectors: np.ndarray
    checkpoint_id: str = ""  # hub revision or content hash of the checkpoint (certificate.checkpoint_identity)

    @property
    def longest(self) -> int:
        return max(len(ids) for ids in self.token_ids)

    @property
    def needed(self) -> int:
        """The longest input either side embeds."""
        return min(self.limit, self.longest)

    @property
    def truncated(self) -> list[int]:
        return [i for i, ids in enumerate(self.token_ids) if len(ids) > self.limit]

    @property
    def texts_digest(self) -> str:
        """sha256 of the texts (JSON list, UTF-8): names the probe set in a certificate."""
        return texts_digest(self.texts)


def texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def token_limit(ckpt: Checkpoint, max_tokens: int | None = None) -> int:
    """The longest input both sides take: the context the GGUF gets, the sentence-transformers
    `max_seq_length`, and `max_tokens` if given."""
    limits = [for_config(ckpt.config).read_spec(ckpt, ()).context_length]
    st_config = ckpt.root / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq_length = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(max_seq_length, int) and max_seq_length > 0:
            limits.append(max_seq_length)
    if max_tokens is not None:
        limits.append(max_tokens)
    return min(limits)


def run_reference(source: str | Checkpoint, texts: Sequence[str] | None = None, *,
                  max_tokens: int | None = None) -> Reference:
    """Tokenize `texts` (default: the built-in probe set) once with the checkpoint's HF tokenizer, cut
    each to the token limit, and embed those ids with its sentence-transformers pipeline."""
    from tokenizers import Tokenizer

    from granite_gguf.certificate import checkpoint_identity

    texts = list(probe_texts() if texts is None else texts)
    if not texts:
        raise UserError("no texts to verify on")
    ckpt = source if isinstance(source, Checkpoint) else open_checkpoint(source)
    hf_tokenizer = Tokenizer.from_file(str(ckpt.root / "tokenizer.json"))
    token_ids = [encoding.ids for encoding in hf_tokenizer.encode_batch(texts)]
    limit = token_limit(ckpt, max_tokens)
    before, after = template_specials(ckpt.tokenizer.get("post_processor"))
    cut = [cut_tokens(ids, limit, int(before is not None), int(after is not None)) for ids in token_ids]
    pad = ckpt.config.get("pad_token_id")
    vectors = reference_vectors(ckpt.root, cut, pad if isinstance(pad, int) else 0)
    return Reference(ckpt.source, texts, token_ids, limit, vectors, checkpoint_identity(ckpt))


@dataclass
class Metrics:
    """Per-text measurements of one GGUF against a reference (`measure`)."""

    mismatches: list[int]  # texts whose llama.cpp ids differ from HF's
    mismatch_examples: list[dict[str, object]]
    truncated: list[int]  # texts cut to the limit (on the reference side)
    cosines: np.ndarray
    squared_errors: np.ndarray
    reference_norms: np.ndarray  # squared L2 norms of the reference vectors
    vectors: np.ndarray
    file_limit: int  # the most tokens the file's Embedder takes

    @property
    def cosine_min(self) -> float:
        return float(self.cosines.min())

    @property
    def cosine_mean(self) -> float:
        return float(self.cosines.mean())

    @property
    def cosine_p1(self) -> float:
        return float(np.percentile(self.cosines, 1))

    @property
    def nmse(self) -> float:
        return float(np.mean(self.squared_errors) / np.mean(self.reference_norms))

    @property
    def worst(self) -> int:
        return int(np.argmin(self.cosines))

    def head(self, n: int) -> Metrics:
        """The measurements of the first `n` texts only."""
        return Metrics([i for i in self.mismatches if i < n], [e for e in self.mismatch_examples if cast(int, e["index"]) < n],
                       [i for i in self.truncated if i < n], self.cosines[:n], self.squared_errors[:n],
                       self.reference_norms[:n], self.vectors[:n], self.file_limit)


def measure(embedder: Embedder, reference: Reference) -> Metrics:
    """Tokenize every reference text once with llama.cpp, compare the ids with HF's, then embed those
    ids cut as the reference's were and compare the vectors."""
    ours = [embedder.tokenize(text) for text in reference.texts]
    mismatches = [i for i, (mine, theirs) in enumerate(zip(ours, reference.token_ids)) if mine != theirs]
    examples = [{"index": i, "text": reference.texts[i][:TEXT_HEAD], "hf": reference.token_ids[i][:16],
                 "llama_cpp": ours[i][:16]} for i in mismatches[:N_EXAMPLES]]
    vectors = embedder.encode_tokens([embedder.truncate(ids, reference.limit) for ids in ours])
    return Metrics(
        mismatches=mismatches, mismatch_examples=examples, truncated=reference.truncated,
        cosines=np.sum(reference.vectors * vectors, axis=1),
        squared_errors=np.sum((reference.vectors - vectors) ** 2, axis=1),
        reference_norms=np.sum(reference.vectors**2, axis=1), vectors=vectors, file_limit=embedder.max_tokens,
    )


@dataclass
class ParityReport:
    gguf: str
    file_type: str
    threshold: float
    n_texts: int
    max_tokens: int  # longest input, uncut
    token_mismatches: int
    cosine_min: float
    cosine_mean: float
    nmse: float
    worst_text: str
    mismatch_examples: list[dict[str, object]] = field(default_factory=list)
    token_limit: int = 0  # inputs longer than this were cut to it on both sides
    file_token_limit: int = 0  # the most tokens the file takes; below `needed` the comparison is not like with like
    needed: int = 0
    truncated_texts: list[dict[str, object]] = field(default_factory=list)  # index, tokens, text of each cut text

    @property
    def passed(self) -> bool:
        return self.token_mismatches == 0 and self.cosine_min >= self.threshold and self.file_token_limit >= self.needed

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}

    def table(self) -> str:
        cut = f"{len(self.truncated_texts)} (cut to {self.token_limit} tokens, special tokens kept)"
        rows = [
            ("file", Path(self.gguf).name), ("type", self.file_type), ("texts", str(self.n_texts)),
            ("longest input (tokens)", str(self.max_tokens)), ("token limit", str(self.token_limit)),
            ("texts cut", cut if self.truncated_texts else "0"),
            *((f"  #{t['index']}", f"{t['tokens']} tokens: {t['text']!r}") for t in self.truncated_texts[:N_EXAMPLES]),
            *((("  …", f"{len(self.truncated_texts) - N_EXAMPLES} more"),) if len(self.truncated_texts) > N_EXAMPLES else ()),
            ("token mismatches", str(self.token_mismatches)),
            ("cosine min", f"{self.cosine_min:.7f}"), ("cosine mean", f"{self.cosine_mean:.7f}"),
            ("NMSE", f"{self.nmse:.3e}"), ("threshold (min cosine)", f"{self.threshold}"),
            *((("file context", f"{self.file_token_limit} tokens: shorter than the {self.needed} compared"),)
              if self.file_token_limit < self.needed else ()),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def compare(reference: Reference, gguf_path: Path, threshold: float | None = None, gpu_layers: int = 0) -> ParityReport:
    """Run `gguf_path` through llama.cpp on the reference's texts (`gpu_layers` offloaded) and measure the differences."""
    with Embedder(gguf_path, max_tokens=reference.needed, gpu_layers=gpu_layers) as embedder:
        if threshold is None:
            threshold = default_threshold(embedder.header)
        metrics = measure(embedder, reference)
    return report_of(reference, metrics, gguf_path, embedder.summary.file_type_name, threshold)


def report_of(reference: Reference, metrics: Metrics, gguf_path: Path, file_type: str, threshold: float) -> ParityReport:
    texts = reference.texts
    return ParityReport(
        gguf=str(gguf_path), file_type=file_type, threshold=threshold, n_texts=len(texts),
        max_tokens=reference.longest, token_mismatches=len(metrics.mismatches), cosine_min=metrics.cosine_min,
        cosine_mean=metrics.cosine_mean, nmse=metrics.nmse, worst_text=texts[metrics.worst][:TEXT_HEAD],
        mismatch_examples=metrics.mismatch_examples, token_limit=reference.limit, file_token_limit=metrics.file_limit,
        needed=reference.needed,
        truncated_texts=[{"index": i, "tokens": len(reference.token_ids[i]), "text": texts[i][:60]}
                         for i in metrics.truncated],
    )


def gate_of(header: Header) -> float | None:
    """The minimum cosine of the type or recipe the file was written as; None when that type has no gate."""
    output = written_type(header)
    return output.min_cosine if output else None


def default_threshold(header: Header) -> float:
    """The minimum cosine a file must reach (`gate_of`); a UserError when its type has none."""
    gate = gate_of(header)
    if gate is None:
        file_type = summarize(header).file_type_name
        raise UserError(f"{header.path}: no parity threshold for file type {file_type}; pass --threshold")
    return gate


def reference_vectors(folder: Path, token_ids: Sequence[Sequence[int]], pad_id: int = 0) -> np.ndarray:
    """L2-normalized fp32 vectors of exactly these token sequences from the checkpoint's
    sentence-transformers pipeline (batched by length, padded, with an attention mask)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    vectors = np.zeros((len(token_ids), model.get_embedding_dimension() or 0), dtype=np.float32)
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), REFERENCE_BATCH):
            batch = order[start:start + REFERENCE_BATCH]
            width = len(token_ids[batch[0]])
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids = token_ids[index]
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, : len(ids)] = 1
            output = model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]
            vectors[batch] = output.float().numpy()
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

