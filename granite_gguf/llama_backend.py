"""The one module that touches llama-cpp-python (pinned, pyproject.toml): a llama-cpp-python upgrade changes this file.

What it owns: loading a model for embeddings (`Model`), its contexts and batches grown by the micro-batch rule
(`Context`, `micro_batch_size`, `context_params`), the pooled vectors read straight from llama.cpp, the
per-context thread count, llama.cpp's log captured while it loads or quantizes (`captured_log`; the CPU_REPACK
report, `Repacked`, is read from it), and llama.cpp's quantizer (`quantize`). Private parts of llama-cpp-python
0.3.36 are used where its public API lacks a call; each such place says so. llama_cpp is imported on first use,
so importing this module (for the constants and the rule) costs nothing.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

# Sequences per decode (llama.cpp allows 256): the n_seq_max of every context made here, so the micro-batch rule
# rounds to a multiple of it.
MAX_SEQUENCES_PER_DECODE = 64
LOG_ERROR = 3  # GGML_LOG_LEVEL_ERROR


def micro_batch_size(tokens: int) -> int:
    """The context size (n_ctx = n_batch = n_ubatch) for `tokens`, rounded up to a multiple of its n_seq_max.

    llama.cpp 0.3.36 reserves the worst-case graph with n_tokens rounded up to a multiple of n_seq_max
    but n_outputs = min(n_ubatch, n_batch) not rounded (src/llama-context.cpp:2528-2531 in graph_reserve,
    :629 and :670 in sched_reserve). MEAN pooling multiplies the n_outputs rows of the last layer
    (src/models/modern-bert.cpp:138-139) by an [n_tokens x n_seqs] mean matrix (src/llama-graph.cpp:2521,
    :3745), so a size that is not a multiple of n_seq_max fails GGML_ASSERT(ggml_can_mul_mat(a, b)) and
    aborts the process. llama-cpp-python sets n_seq_max = min(n_batch, 256) for embeddings (llama.py:408):
    hence "above 256 (not 2,048), a multiple of 256" for its own contexts; the contexts made here have
    n_seq_max = min(size, MAX_SEQUENCES_PER_DECODE), so a multiple of 64 (`context_params`).
    """
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens}")
    step = min(tokens, MAX_SEQUENCES_PER_DECODE)
    return -(-tokens // step) * step


@contextmanager
def captured_log(on_line: Callable[[int, str], object]) -> Iterator[None]:
    """llama.cpp's log lines go to `on_line(level, text)` during the block instead of stderr; llama-cpp-python's own
    log callback is put back afterwards."""
    import llama_cpp
    import llama_cpp._logger  # private: the callback llama-cpp-python installs, to put back

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        on_line(level, text.decode(errors="replace"))

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


@dataclass(frozen=True)
class Repacked:
    """What llama.cpp's CPU backend repacked at load time (its CPU_REPACK buffer): the 4-bit blocks it
    rearranges for its wide-vector GEMM kernels (Q4_0, IQ4_NL, Q4_K, …), the fast path on x86."""

    tensors: int
    mib: float

    @classmethod
    def from_log(cls, lines: list[str]) -> Repacked:
        """Counted from the load log: one debug line per repacked tensor (ggml-cpu/repack.cpp:4917) and
        the buffer's size line (src/llama-model.cpp:1930)."""
        sizes = [float(m[1]) for line in lines if (m := _REPACK_BUFFER.search(line))]
        return cls(sum(1 for line in lines if _REPACK_TENSOR.search(line)), sum(sizes))

    def describe(self) -> str:
        if not self.tensors:
            return "repacked: none (no CPU_REPACK buffer: the blocks run on the generic kernels)"
        return f"repacked: {self.tensors} tensors, {self.mib:.1f} MiB (CPU_REPACK)"


_REPACK_TENSOR = re.compile(r"repack: repack tensor ")
_REPACK_BUFFER = re.compile(r"CPU_REPACK model buffer size =\s*([0-9.]+) MiB")


class Model:
    """A GGUF loaded by llama.cpp for embeddings, with `threads` threads per context, and what is read off it."""

    def __init__(self, path: str, *, threads: int, gpu_layers: int, flash_attn: bool) -> None:
        import llama_cpp

        lines: list[str] = []
        # The smallest context llama-cpp-python's rule allows; `Context.reserve` grows it to what inputs need.
        with captured_log(lambda level, text: lines.append(text)):
            self._llama = llama_cpp.Llama(
                model_path=path, embedding=True, n_ctx=MAX_SEQUENCES_PER_DECODE, n_batch=MAX_SEQUENCES_PER_DECODE,
                n_ubatch=MAX_SEQUENCES_PER_DECODE, n_threads=threads, n_threads_batch=threads, n_gpu_layers=gpu_layers,
                flash_attn=flash_attn, verbose=False,
            )
        self.threads = threads
        self.repacked = Repacked.from_log(lines)
        # Private: llama-cpp-python 0.3.36's Llama has no public accessor for the vocab's add-BOS flag.
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._llama._model.vocab))
        self.dimension = self._llama.n_embd()
        self.vocab_size = self._llama.n_vocab()
        self.size_bytes = int(llama_cpp.llama_model_size(self._llama.model))  # tensors as loaded

    def tokenize(self, text: bytes, *, add_special: bool, special: bool) -> list[int]:
        """Token ids of UTF-8 `text`; BOS/EOS per the file if `add_special`; special tokens spelled out in the text
        read as those tokens if `special`."""
        return list(self._llama.tokenize(text, add_bos=add_special, special=special))

    def contexts(self, count: int) -> list[Context]:
        """`count` contexts on this model: the first is the Llama's own, the others are made at their first `reserve`."""
        own = Context(self, self._llama._ctx, self._llama._batch, MAX_SEQUENCES_PER_DECODE)
        return [own] + [Context(self) for _ in range(count - 1)]

    def close(self) -> None:
        self._llama.close()


class Context:
    """One llama.cpp context on a `Model` and its batch, grown to what a decode needs. Not thread-safe: one per thread."""

    def __init__(self, model: Model, ctx: Any = None, batch: Any = None, capacity: int = 0) -> None:
        self.model, self.ctx, self.batch, self.capacity = model, ctx, batch, capacity

    def reserve(self, tokens: int) -> None:
        """Hold `tokens` per decode: a new context, sized by `micro_batch_size`, if this one is smaller."""
        from llama_cpp._internals import LlamaBatch, LlamaContext  # private: the public Llama has one fixed context

        if tokens <= self.capacity:
            return
        size = micro_batch_size(tokens)
        self.close()
        llama = self.model._llama
        self.ctx = LlamaContext(model=llama._model, params=context_params(llama, size), verbose=False)
        self.batch = LlamaBatch(n_tokens=size, embd=0, n_seq_max=1, verbose=False)
        self.capacity = size

    def decode(self, sequences: Sequence[list[int]]) -> np.ndarray:
        """The pooled vector of each sequence, decoded together (at most `capacity` tokens in all).

        Private calls: the public Llama.embed tokenizes text itself, cuts at n_batch by dropping the end (and with
        it SEP/EOS), packs in input order and returns lists; here the sequences are token ids, read straight into
        numpy. Same calls as Llama.embed makes (llama.py in 0.3.36)."""
        import llama_cpp

        self.batch.reset()
        for seq_id, tokens in enumerate(sequences):
            self.batch.add_sequence(tokens, seq_id, True)
        self.ctx.kv_cache_clear()  # a no-op for encoders (no memory); kept for files that have one
        self.ctx.decode(self.batch)
        rows = np.empty((len(sequences), self.model.dimension), dtype=np.float32)
        for seq_id in range(len(sequences)):
            pointer = llama_cpp.llama_get_embeddings_seq(self.ctx.ctx, seq_id)
            rows[seq_id] = np.ctypeslib.as_array(pointer, shape=(self.model.dimension,))
        return rows

    @contextmanager
    def using_threads(self, threads: int) -> Iterator[None]:
        """Decode with `threads` threads during the block, then with the model's own count again."""
        import llama_cpp

        own = self.model.threads
        if threads != own:
            llama_cpp.llama_set_n_threads(self.ctx.ctx, threads, threads)
        try:
            yield
        finally:
            if threads != own:
                llama_cpp.llama_set_n_threads(self.ctx.ctx, own, own)

    def close(self) -> None:
        if self.ctx is not None and self.ctx is not self.model._llama._ctx:  # the Llama closes its own
            self.ctx.close()
            self.batch.close()


def context_params(llama: Any, size: int) -> Any:  # llama_cpp.llama_context_params
    """The Llama's own context parameters with n_ctx = n_batch = n_ubatch = `size` (see `micro_batch_size`)."""
    params = type(llama.context_params).from_buffer_copy(llama.context_params)
    params.n_ctx = params.n_batch = params.n_ubatch = size
    params.n_seq_max = min(size, MAX_SEQUENCES_PER_DECODE)
    return params


_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")  # llama.cpp's quantizer logs "[  12/ 200] blk.0.… " per tensor


def quantize(source: str, dest: str, *, file_type: int, threads: int, token_embedding_type: int | None = None,
             progress: Callable[[int, int], object] = lambda done, total: None) -> str | None:
    """llama.cpp's own quantizer (`llama_model_quantize`) from the GGUF `source` to `dest` as `file_type` (a
    `LlamaFileType`), the token embedding table as `token_embedding_type` if given. `progress(done, total)` follows
    its per-tensor log lines. None when it succeeded, else what went wrong (its status and last error line)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads
    if token_embedding_type is not None:
        params.token_embedding_type = token_embedding_type
    errors: list[str] = []

    def on_line(level: int, text: str) -> None:
        tensor = _TENSOR_LINE.match(text)
        if tensor:
            progress(int(tensor[1]), int(tensor[2]))
        elif level == LOG_ERROR:
            errors.append(text.strip())

    with captured_log(on_line):
        status = llama_cpp.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params))
    if status == 0:
        return None
    return f"status {status}" + (f": {errors[-1]}" if errors else "")
