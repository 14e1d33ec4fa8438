"""Embedder: a GGUF embedding model run through llama-cpp-python, with settings read from the file.

llama.cpp aborts the process when a non-causal model gets a sequence longer than the micro-batch,
so every input is cut to `max_tokens` (or refused, or split, per `long_inputs`) before it reaches
llama.cpp, and the context is created with a micro-batch that holds the longest allowed input.
Short inputs are sorted by length and packed several per decode up to a token budget: llama.cpp
computes attention over the whole micro-batch, so the budget is small (measured, docs/performance.md).
The context is sized to the inputs at hand (grown on demand, within llama_backend.micro_batch_size's rule) rather
than to the maximum context, so a one-sentence call reserves small compute buffers. Everything that
touches llama-cpp-python is granite_gguf/llama_backend.py's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType

import numpy as np

from granite_gguf.errors import UserError
from granite_gguf.gguf_file import load
from granite_gguf.llama_backend import MAX_SEQUENCES_PER_DECODE, Context, Model

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 8192  # the Granite R2 sentence-transformers max_seq_length
# Tokens per decode when packing short inputs (sequences per decode: llama_backend.MAX_SEQUENCES_PER_DECODE).
# llama.cpp attends over the whole micro-batch, so packing costs attention: on the 97m q4_0 file,
# 512-token documents ran at 1.57x / 1.44x / 1.09x PyTorch fp32 with 512 / 1,024 / 2,048 tokens per
# decode (docs/performance.md). 512 also halves llama.cpp's per-context output buffer (n_vocab x tokens).
DEFAULT_BATCH_TOKENS = 512
CHUNK_OVERLAP_FRACTION = 8  # "chunk" windows overlap by 1/8 of their length


class LongInputs(Enum):
    """What `encode` does with an input longer than `max_tokens`."""

    TRUNCATE = "truncate"  # keep the first tokens (special tokens kept), warn with a count
    ERROR = "error"  # refuse the whole call before any work
    CHUNK = "chunk"  # overlapping windows, vectors averaged (weighted by length) and re-normalized


class NonFiniteVectorError(UserError):
    """llama.cpp computed a vector holding NaN or infinity (weights that are NaN or overflow): refused rather than
    returned, as JSON cannot carry it and a search index would be poisoned by it."""


@dataclass
class _Piece:
    """One sequence handed to llama.cpp: a whole input, a truncated one, or one chunk of a long one."""

    owner: int  # index of the input text
    tokens: list[int]
    input_tokens: int  # the whole input's token count, before any cut


@dataclass(frozen=True)
class Embeddings:
    """What `embed` returns: one row per input, and per input its token count before any cut
    (what APIs bill as usage) and whether it was truncated to `max_tokens`."""

    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]


def cut_tokens(tokens: Sequence[int], limit: int, n_prefix: int, n_suffix: int) -> list[int]:
    """`tokens` cut to `limit`, keeping its first `n_prefix` and last `n_suffix` ids (the special tokens
    the tokenizer adds): the truncation of sentence-transformers and HF tokenizers, and the Embedder's."""
    tokens = list(tokens)
    if len(tokens) <= limit:
        return tokens
    room = limit - n_prefix - n_suffix
    return tokens[:n_prefix] + tokens[n_prefix:n_prefix + room] + tokens[len(tokens) - n_suffix:]


def usable_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Layout:
    """How the Embedder spreads a call over CPUs: `workers` llama.cpp contexts on one loaded model, each
    decoding its own micro-batches in a thread (llama.cpp releases the GIL) with `threads` threads."""

    workers: int
    threads: int


def default_layout(cpus: int | None = None) -> Layout:
    """The worker layout used when none is given (the Embedder, the server, the corpus job): one
    single-threaded context per usable CPU. Measured on 2 CPUs (docs/performance.md): 2 x 1 beats
    1 x 2 by about 15 % on the 97m q4_0 file, as llama.cpp's per-op thread barriers cost more than
    the work one small micro-batch gives a second thread. Not measured beyond 2 CPUs."""
    cpus = cpus or usable_threads()
    return Layout(workers=max(1, cpus), threads=1)


def clean_text(text: str) -> bytes:
    """UTF-8 for llama.cpp: lone surrogates become U+FFFD instead of an exception or a '?'."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class Embedder:
    """`encode(texts)` → float32 array, in the style of sentence-transformers, on a GGUF model."""

    def __init__(self, path: str | os.PathLike[str], *, n_threads: int | None = None, gpu_layers: int = 0,
                 max_tokens: int | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 flash_attn: bool = True, unsafe_skip_check: bool = False, workers: int | None = None) -> None:
        """`n_threads` CPUs in all, split between `workers` contexts (default: `default_layout`)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such GGUF file")
        # llama.cpp aborts the whole process on some malformed files: validate unless told not to
        # (once per version of the file: a pass is remembered, granite_gguf/gguf_file/remembered.py), and load the file
        # that was checked, through a descriptor proven to be that version, whatever is renamed over the path meanwhile.
        file = load(self.path, check=not unsafe_skip_check)
        summary = file.summary
        if summary.pooling not in ("CLS", "MEAN", "LAST"):
            raise UserError(f"{self.path}: pooling {summary.pooling} gives no sentence vector; not an embedding model")
        context = int(summary.arch_value("context_length", DEFAULT_MAX_TOKENS))
        wanted = max_tokens or DEFAULT_MAX_TOKENS
        if wanted < 1:
            raise UserError(f"max_tokens must be positive, got {max_tokens}")
        self.max_tokens = min(context, wanted)
        if max_tokens and self.max_tokens < max_tokens:
            log.warning("max_tokens %d lowered to the model's context %d", max_tokens, self.max_tokens)
        if batch_tokens < 1:
            raise UserError(f"batch_tokens must be positive, got {batch_tokens}")
        self.batch_tokens = min(batch_tokens, context)
        self.header = file.header  # what was read and checked (no vocabulary arrays), for tensor-level facts
        self.summary = summary
        self.pooling = summary.pooling
        self.normalize = summary.normalize  # the model's own Normalize module
        self.matryoshka_dims = summary.matryoshka_dims
        cpus = n_threads or usable_threads()
        if workers is not None and workers < 1:
            raise UserError(f"workers must be positive, got {workers}")
        self.layout = Layout(workers, max(1, cpus // workers)) if workers else default_layout(cpus)
        with file.opened() as load_path:
            self._model = Model(load_path, threads=self.layout.threads, gpu_layers=gpu_layers, flash_attn=flash_attn)
        self.repacked = self._model.repacked
        self._contexts = self._model.contexts(self.layout.workers)
        self._prefix = 1 if self._model.add_bos else 0
        self._specials = self._model.tokenize(b"", add_special=True, special=False)  # e.g. [CLS, SEP]
        self.dimension = self._model.dimension
        self.vocab_size = self._model.vocab_size  # token ids a caller may pass to encode_tokens: 0 .. vocab_size - 1
        self.model_bytes = self._model.size_bytes  # tensors as loaded (server metrics)
        self.truncated_inputs = 0

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids as the model sees them, BOS/EOS included per the file's tokenizer settings (none with
        `add_special=False`, as llama-server tokenizes the later strings of a mixed token-id input).

        Special tokens spelled out in the text ("<eos>", "[SEP]") are read as those tokens, as HF
        tokenizers (and so sentence-transformers) and llama-server do.
        """
        return self._model.tokenize(clean_text(text), add_special=add_special, special=True)

    def encode(self, texts: str | Sequence[str], *, batch_size: int = 32, normalize_embeddings: bool = True,
               truncate_dim: int | None = None, show_progress_bar: bool = False,
               long_inputs: str | LongInputs = LongInputs.TRUNCATE) -> np.ndarray:
        """One float32 row per text (a 1-D array for a single string).

        Pipeline per text, as sentence-transformers runs it: pooled vector → the model's Normalize
        (if the file says so) → first `truncate_dim` values → L2 normalization if `normalize_embeddings`.
        """
        single = isinstance(texts, str)
        result = self.embed([texts] if isinstance(texts, str) else texts, batch_size=batch_size,
                            normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim,
                            show_progress_bar=show_progress_bar, long_inputs=long_inputs)
        return result.vectors[0] if single else result.vectors

    def embed(self, texts: Sequence[str], *, batch_size: int = 32, normalize_embeddings: bool = True,
              truncate_dim: int | None = None, show_progress_bar: bool = False,
              long_inputs: str | LongInputs = LongInputs.TRUNCATE) -> Embeddings:
        """`encode` for a list, with each input's token count and truncation flag beside the vectors."""
        items = list(texts)
        if not all(isinstance(text, str) for text in items):
            raise UserError("encode takes a string or a sequence of strings")
        dim = self.checked_dim(truncate_dim)
        try:
            mode = LongInputs(long_inputs)
        except ValueError:
            raise UserError(f"long_inputs must be one of {[m.value for m in LongInputs]}, got {long_inputs!r}") from None
        _check_batch_size(batch_size)
        pieces = list(self._pieces(items, mode))
        rows, token_counts = self._pooled(pieces, len(items), dim, normalize_embeddings, batch_size, show_progress_bar)
        truncated = [mode is LongInputs.TRUNCATE and count > self.max_tokens for count in token_counts]
        return Embeddings(rows, token_counts, truncated)

    def encode_tokens(self, token_ids: Sequence[Sequence[int]], *, batch_size: int = 32, normalize_embeddings: bool = True,
                      truncate_dim: int | None = None, show_progress_bar: bool = False) -> np.ndarray:
        """`encode` for inputs already tokenized (e.g. by `tokenize`, then cut with `truncate`): one row per
        sequence, each at most `max_tokens` ids, embedded as they are."""
        dim = self.checked_dim(truncate_dim)
        _check_batch_size(batch_size)
        pieces = [_Piece(owner, list(tokens), len(tokens)) for owner, tokens in enumerate(token_ids)]
        too_long = [i for i, piece in enumerate(pieces) if len(piece.tokens) > self.max_tokens]
        if too_long:
            raise UserError(f"{len(too_long)} token sequence(s) longer than max_tokens {self.max_tokens} "
                            f"(sequence {too_long[0]}); cut them with truncate()")
        return self._pooled(pieces, len(pieces), dim, normalize_embeddings, batch_size, show_progress_bar)[0]

    def truncate(self, tokens: Sequence[int], limit: int | None = None) -> list[int]:
        """`tokens` (as `tokenize` gives them) cut to `limit` (at most, and by default, `max_tokens`) with
        the special tokens kept, as `encode` cuts."""
        limit = self.max_tokens if limit is None else min(limit, self.max_tokens)
        return cut_tokens(tokens, limit, self._prefix, len(self._specials) - self._prefix)

    def _pooled(self, pieces: list[_Piece], n_items: int, dim: int, normalize_embeddings: bool, batch_size: int,
                show_progress_bar: bool) -> tuple[np.ndarray, list[int]]:
        """One row per owner (pieces embedded, the model's Normalize, chunks averaged, `dim` kept, L2), and
        each owner's token count before any cut."""
        vectors = self._embed(pieces, batch_size, show_progress_bar)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if bad.size:
            raise NonFiniteVectorError(f"{self.path}: the model gave a vector with NaN or infinite values for input "
                                       f"{pieces[bad[0]].owner} ({bad.size} of {len(pieces)} sequences); its weights "
                                       "are broken")
        if self.normalize:
            vectors = _l2(vectors)
        rows = np.zeros((n_items, self.dimension), dtype=np.float32)
        weights = np.zeros(n_items, dtype=np.float32)
        token_counts = [0] * n_items
        for piece, vector in zip(pieces, vectors):
            rows[piece.owner] += len(piece.tokens) * vector
            weights[piece.owner] += len(piece.tokens)
            token_counts[piece.owner] = piece.input_tokens
        rows /= np.maximum(weights, 1)[:, None]
        if self.normalize:
            rows = _l2(rows)
        rows = rows[:, :dim]
        return (_l2(rows) if normalize_embeddings else rows), token_counts

    def checked_dim(self, truncate_dim: int | None) -> int:
        """The output width for `truncate_dim`; UserError (with the valid ones) unless the file declares it."""
        if truncate_dim is None or truncate_dim == self.dimension:
            return self.dimension
        if truncate_dim not in self.matryoshka_dims:
            valid = sorted({*self.matryoshka_dims, self.dimension}, reverse=True)
            raise UserError(f"dimension {truncate_dim} is not a Matryoshka dimension of this model; valid: "
                            f"{', '.join(map(str, valid))}")
        return truncate_dim

    def _pieces(self, texts: list[str], mode: LongInputs) -> Iterator[_Piece]:
        """The sequences to decode; long inputs truncated, refused or chunked, special tokens kept."""
        tokenized = [self.tokenize(text) for text in texts]
        too_long = [i for i, tokens in enumerate(tokenized) if len(tokens) > self.max_tokens]
        if too_long and mode is LongInputs.ERROR:
            first = too_long[0]
            raise UserError(f"{len(too_long)} input(s) longer than max_tokens {self.max_tokens} (input {first}: "
                            f"{len(tokenized[first])} tokens); use long_inputs='truncate' or 'chunk'")
        if too_long and mode is LongInputs.TRUNCATE:
            self.truncated_inputs += len(too_long)
            log.warning("%d input(s) truncated to %d tokens", len(too_long), self.max_tokens)
        prefix, suffix = self._specials[: self._prefix], self._specials[self._prefix:]
        room = self.max_tokens - len(self._specials)
        for owner, tokens in enumerate(tokenized):
            if len(tokens) <= self.max_tokens:
                yield _Piece(owner, tokens, len(tokens))
                continue
            content = tokens[len(prefix): len(tokens) - len(suffix)]
            if mode is LongInputs.TRUNCATE:
                yield _Piece(owner, self.truncate(tokens), len(tokens))
                continue
            step = room - room // CHUNK_OVERLAP_FRACTION
            for start in range(0, len(content) - room + step, step):
                yield _Piece(owner, prefix + content[start: start + room] + suffix, len(tokens))

    def _embed(self, pieces: list[_Piece], batch_size: int, show_progress_bar: bool) -> np.ndarray:
        """Pooled vectors, longest first, packed up to `batch_tokens` tokens and `batch_size` sequences per decode.

        A piece longer than `batch_tokens` is decoded alone, on the first context only, with every
        thread of the layout: llama.cpp 0.3.36 gives each context an output buffer of n_vocab floats
        per token of its largest batch, even for embeddings (src/llama-context.cpp, output_reserve:
        `has_logits = true`, cleared, so resident), 5.9 GB for 8,192 tokens of a 180,000-token
        vocabulary. One large context instead of one per worker keeps that cost to one buffer.
        """
        vectors = np.zeros((len(pieces), self.dimension), dtype=np.float32)
        groups = list(self._groups(pieces, batch_size))
        sizes = [sum(len(pieces[i].tokens) for i in group) for group in groups]
        long = [group for group, size in zip(groups, sizes) if size > self.batch_tokens]
        short = [group for group, size in zip(groups, sizes) if size <= self.batch_tokens]
        lock = threading.Lock()

        def decode(context: Context, group: list[int]) -> None:
            vectors[group] = context.decode([pieces[index].tokens for index in group])
            with lock:
                advance(len(group))

        with _progress_bar(sum(map(len, groups)), show_progress_bar) as advance:
            if long:
                first = self._contexts[0]
                first.reserve(max(sizes))
                with first.using_threads(self.layout.workers * self.layout.threads):
                    for group in long:
                        decode(first, group)
            if short:
                contexts = self._contexts[:min(len(short), len(self._contexts))]
                for context in contexts:
                    context.reserve(max(size for size in sizes if size <= self.batch_tokens))
                pending = iter(short)

                def work(context: Context) -> None:
                    """Decode groups until none is left (each worker takes the next one when done)."""
                    while True:
                        with lock:
                            group = next(pending, None)
                        if group is None:
                            return
                        decode(context, group)

                if len(contexts) == 1:
                    work(contexts[0])
                else:
                    with ThreadPoolExecutor(len(contexts)) as pool:
                        list(pool.map(work, contexts))  # list() re-raises a worker's exception
        return vectors

    def _groups(self, pieces: list[_Piece], batch_size: int) -> Iterator[list[int]]:
        """Piece indexes per decode: longest first, up to `batch_tokens` tokens and `batch_size` sequences."""
        order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i].tokens))
        order = [i for i in order if pieces[i].tokens]  # only a file without special tokens gives none
        start = 0
        while start < len(order):
            group = [order[start]]
            used = len(pieces[order[start]].tokens)
            for index in order[start + 1:]:
                size = len(pieces[index].tokens)
                if len(group) == batch_size or used + size > self.batch_tokens:
                    break
                group.append(index)
                used += size
            yield group
            start += len(group)

    def describe(self) -> str:
        """One line for verbose output: repacking, the context's size now, threads."""
        capacity = max(context.capacity for context in self._contexts)
        return (f"{self.repacked.describe()}; {self.layout.workers} worker(s) x {self.layout.threads} thread(s); "
                f"context {capacity} tokens")

    def close(self) -> None:
        for context in self._contexts:
            context.close()
        self._model.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_SEQUENCES_PER_DECODE:
        raise UserError(f"batch_size must lie in 1..{MAX_SEQUENCES_PER_DECODE}, got {batch_size}")


@contextmanager
def _progress_bar(total: int, shown: bool) -> Iterator[Callable[[int], object]]:
    """A tqdm bar's `update` when shown; otherwise a no-op, without importing tqdm (40 ms of a cold start)."""
    if not shown:
        yield lambda done: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="seq") as bar:
        yield bar.update


def _l2(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
