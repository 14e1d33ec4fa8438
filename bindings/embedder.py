"""Embedder: a GGUF embedding model run through llama-cpp-python, read settings from the file itself.

Each input is decoded as its own micro-batch: llama.cpp aborts a non-causal model whose sequence is
longer than `n_ubatch`, so context, batch and micro-batch are all sized to `max_tokens`, and longer
inputs are truncated (counted, with a warning) before they reach llama.cpp.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from granite_gguf.convert.inspect import read_summary
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 8192
# llama.cpp 0.3.36 (llama-cpp-python's) aborts at context creation (GGML_ASSERT in build_pooling) for
# a MEAN-pooled modern-bert with n_ubatch > 2048; measured, see docs/parity.md.
MEAN_POOLING_MAX_TOKENS = 2048


class Embedder:
    """`encode(texts)` → float32 array, like sentence-transformers, on a GGUF model."""

    def __init__(self, path: str | os.PathLike[str], *, n_threads: int | None = None, gpu_layers: int = 0,
                 max_tokens: int | None = None, flash_attn: bool = True) -> None:
        import llama_cpp

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such GGUF file")
        self.summary = read_summary(self.path)
        context = int(self.summary.arch_value("context_length", DEFAULT_MAX_TOKENS))
        self.max_tokens = min(context, max_tokens or DEFAULT_MAX_TOKENS)
        if self.summary.pooling == "MEAN" and self.max_tokens > MEAN_POOLING_MAX_TOKENS:
            log.warning("MEAN pooling: inputs limited to %d tokens (llama.cpp aborts above)", MEAN_POOLING_MAX_TOKENS)
            self.max_tokens = MEAN_POOLING_MAX_TOKENS
        self.normalize = self.summary.normalize
        self.matryoshka_dims = self.summary.matryoshka_dims
        self._llama = llama_cpp.Llama(
            model_path=str(self.path), embedding=True, n_ctx=self.max_tokens, n_batch=self.max_tokens,
            n_ubatch=self.max_tokens, n_seq_max=1, n_threads=n_threads or os.cpu_count(), n_gpu_layers=gpu_layers,
            flash_attn=flash_attn, verbose=False,
        )
        self.dimension = self._llama.n_embd()
        self.truncated_inputs = 0

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model sees them, BOS/EOS included per the file's tokenizer settings."""
        return self._llama.tokenize(text.encode("utf-8", errors="replace"), add_bos=True, special=False)

    def encode(self, texts: str | Sequence[str], *, normalize_embeddings: bool = True) -> np.ndarray:
        """One row per text: the pooled vector, L2-normalized unless asked not to."""
        import llama_cpp

        single = isinstance(texts, str)
        rows = np.zeros((1 if single else len(texts), self.dimension), dtype=np.float32)
        ctx, batch = self._llama._ctx, self._llama._batch
        for row, text in enumerate([texts] if single else texts):
            tokens = self.tokenize(text)
            if len(tokens) > self.max_tokens:
                self.truncated_inputs += 1
                log.warning("input of %d tokens truncated to %d", len(tokens), self.max_tokens)
                tokens = tokens[: self.max_tokens]
            batch.reset()
            batch.add_sequence(tokens, 0, True)
            ctx.kv_cache_clear()
            ctx.decode(batch)
            rows[row] = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(ctx.ctx, 0), shape=(self.dimension,))
        if normalize_embeddings:
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return rows[0] if single else rows

    def close(self) -> None:
        self._llama.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
