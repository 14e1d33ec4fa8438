"""Dynamic batching: requests from many connections share llama.cpp decodes, on one or more contexts.

A llama.cpp context is not thread-safe, so each worker thread owns one Embedder. A worker takes
its share of the requests waiting in the queue (the queue split evenly between the workers waiting
for work, up to `max_batch_inputs` inputs), tokenizes and checks each
request on its own (a request with an input too long under `long_inputs="error"` gets its error
here, without touching the others), and hands every remaining sequence to one
`Embedder.encode_tokens` call, which sorts them by length and packs them into shared decodes up to
its token budget; the rows are then cut back per request, in order, and cut to each request's
dimension. Only `long_inputs="chunk"` (several windows per input) goes through `Embedder.embed`.
Requests with different normalization, long-input mode or token limit go into separate calls. When
a shared call fails anyway (a bug), each request of it is run on its own, so only the request at
fault gets the error. A request whose vectors come back NaN or infinite gets the Embedder's
`NonFiniteVectorError`, logged: the model file is at fault, not the client.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from granite_gguf.bindings.embedder import Embedder, Embeddings, LongInputs, NonFiniteVectorError
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_INPUTS = 256  # inputs per shared call: bounds the wait of a request behind others
DEFAULT_MAX_QUEUED_INPUTS = 16384  # past this, new requests are refused (Overloaded) instead of queued

Input = str | tuple[int, ...]  # a text, or token ids as a client sent them (embedded as they are)


class Overloaded(Exception):
    """The queue holds `max_queued_inputs` inputs already; the caller should answer 503."""


class TooLong(UserError):
    """An input past the token limit under `long_inputs="error"`; the server words it per API."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input {index} has {tokens} tokens, more than the limit of {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


class LimitTooSmall(UserError):
    """A token limit that leaves no room for text once the special tokens are counted (ollama's num_ctx 1)."""

    def __init__(self, limit: int, specials: int) -> None:
        super().__init__(f"a limit of {limit} tokens leaves no room beside the {specials} special token(s)")
        self.limit, self.specials = limit, specials


@dataclass(frozen=True)
class Options:
    """Per-request settings; requests with equal options share a call (the dimension is cut afterwards)."""

    truncate_dim: int | None = None  # any width 1..dimension: the first values, L2-normalized again
    long_inputs: LongInputs = LongInputs.TRUNCATE
    normalize: bool = True
    max_tokens: int | None = None  # this request's limit (ollama's options.num_ctx), at most the Embedder's


@dataclass
class _Job:
    inputs: list[Input]
    options: Options
    label: str  # for the log: the request id
    future: Future[Embeddings] = field(default_factory=Future)


@dataclass
class _Prepared:
    """A job's token sequences, ready for a shared call, and per input the tokens it had before any cut."""

    job: _Job
    sequences: list[list[int]]
    token_counts: list[int]
    truncated: list[bool]


class Batcher:
    """Queues `submit` calls from any thread; one worker thread per Embedder runs them in shared batches."""

    def __init__(self, embedders: Sequence[Embedder], *, max_batch_inputs: int = DEFAULT_MAX_BATCH_INPUTS,
                 max_queued_inputs: int = DEFAULT_MAX_QUEUED_INPUTS,
                 on_batch: Callable[[int], object] | None = None) -> None:
        """`on_batch(inputs)` is called (on a worker thread) with the size of each batch a worker takes."""
        if not embedders:
            raise ValueError("a Batcher needs at least one Embedder")
        self.embedders = list(embedders)
        self.on_batch = on_batch
        self.max_batch_inputs = max_batch_inputs
        self.max_queued_inputs = max_queued_inputs
        self.specials = len(self.embedders[0].tokenize(""))  # e.g. [CLS] and [SEP], kept by every cut
        self._jobs: deque[_Job] = deque()
        self._queued_inputs = 0
        self._idle = 0  # workers waiting in _next_batch
        self._ready = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, args=(embedder,), name=f"embed-worker-{i}", daemon=True)
                         for i, embedder in enumerate(self.embedders)]
        for thread in self._threads:
            thread.start()

    @property
    def queued_inputs(self) -> int:
        """Inputs waiting for a worker (for the queue-depth metric)."""
        return self._queued_inputs

    @property
    def idle_workers(self) -> int:
        """Workers waiting for a request."""
        return self._idle

    def submit(self, inputs: Sequence[Input], options: Options = Options(), label: str = "") -> Future[Embeddings]:
        """Queue one request; its future resolves to the request's own rows, token counts and flags."""
        job = _Job(list(inputs), options, label)
        limit = self.limit(options)
        if limit <= self.specials:
            raise LimitTooSmall(limit, self.specials)
        with self._ready:
            if self._stopping:
                raise RuntimeError("the batcher is closed")
            if self._queued_inputs + len(job.inputs) > self.max_queued_inputs and self._jobs:
                raise Overloaded(f"{self._queued_inputs} inputs are queued; at most {self.max_queued_inputs}")
            self._jobs.append(job)
            self._queued_inputs += len(job.inputs)
            self._ready.notify()
        return job.future

    def limit(self, options: Options) -> int:
        """The most tokens an input of a request with `options` may have."""
        most = self.embedders[0].max_tokens
        return most if options.max_tokens is None else min(options.max_tokens, most)

    def close(self) -> None:
        """Finish every queued request, stop the workers and close the Embedders."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        for embedder in self.embedders:
            embedder.close()

    def _next_batch(self) -> list[_Job]:
        """Block until work arrives; take the oldest queued jobs that fit in this worker's share (always one).

        The share is the queue split evenly between the workers waiting for work, at most
        `max_batch_inputs`: a worker that took the whole queue would leave the others idle while every
        request of its batch waits for the last one (a burst of 8 passages on 2 workers: 8 decodes in a
        row on one context, against 4 on each)."""
        with self._ready:
            self._idle += 1
            while not self._jobs and not self._stopping:
                self._ready.wait()
            share = min(self.max_batch_inputs, -(-self._queued_inputs // self._idle))  # ceil
            self._idle -= 1
            batch: list[_Job] = []
            inputs = 0
            while self._jobs and (not batch or inputs + len(self._jobs[0].inputs) <= share):
                job = self._jobs.popleft()
                batch.append(job)
                inputs += len(job.inputs)
            self._queued_inputs -= inputs
            if self._jobs:
                self._ready.notify()  # the rest is another waiting worker's
            return batch

    def _work(self, embedder: Embedder) -> None:
        while batch := self._next_batch():
            if self.on_batch is not None:
                self.on_batch(sum(len(job.inputs) for job in batch))
            groups: dict[tuple[LongInputs, bool, int | None], list[_Job]] = {}
            for job in batch:
                if job.future.set_running_or_notify_cancel():
                    key = (job.options.long_inputs, job.options.normalize, job.options.max_tokens)
                    groups.setdefault(key, []).append(job)
            for jobs in groups.values():
                self._run(embedder, jobs)

    def _run(self, embedder: Embedder, jobs: list[_Job]) -> None:
        options = jobs[0].options
        try:
            if self._chunked(jobs[0]):
                texts = [text for job in jobs for text in job.inputs if isinstance(text, str)]
                result = embedder.embed(texts, long_inputs=LongInputs.CHUNK, normalize_embeddings=options.normalize)
                vectors, counts, truncated = result.vectors, result.token_counts, result.truncated
                ready = jobs
            else:
                prepared = [p for job in jobs if (p := self._prepare(embedder, job)) is not None]
                ready = [p.job for p in prepared]
                sequences = [seq for p in prepared for seq in p.sequences]
                vectors = (embedder.encode_tokens(sequences, normalize_embeddings=options.normalize)
                           if sequences else np.zeros((0, embedder.dimension), np.float32))
                counts = [n for p in prepared for n in p.token_counts]
                truncated = [t for p in prepared for t in p.truncated]
        except Exception as exc:
            if len(jobs) > 1:  # find the request at fault: each on its own (not those _prepare answered already)
                for job in jobs:
                    if not job.future.done():
                        self._run(embedder, [job])
                return
            if not isinstance(exc, UserError) or isinstance(exc, NonFiniteVectorError):  # bad input is the client's to fix
                log.exception("[%s] embedding failed", jobs[0].label, extra={"request_id": jobs[0].label})
            jobs[0].future.set_exception(exc)
            return
        start = 0
        for job in ready:
            end = start + len(job.inputs)
            rows = _cut(vectors[start:end], job.options.truncate_dim, job.options.normalize)
            job.future.set_result(Embeddings(rows, counts[start:end], truncated[start:end]))  # finite: the Embedder checked
            start = end

    def _chunked(self, job: _Job) -> bool:
        """Text requests under long_inputs="chunk" and no limit of their own go through `Embedder.embed`."""
        return (job.options.long_inputs is LongInputs.CHUNK and job.options.max_tokens is None
                and all(isinstance(item, str) for item in job.inputs))

    def _prepare(self, embedder: Embedder, job: _Job) -> _Prepared | None:
        """The job's sequences, each cut to its limit (special tokens kept), or None with its error set."""
        limit = self.limit(job.options)
        refuse = job.options.long_inputs is LongInputs.ERROR
        sequences: list[list[int]] = []
        counts: list[int] = []
        truncated: list[bool] = []
        for index, item in enumerate(job.inputs):
            tokens = embedder.tokenize(item) if isinstance(item, str) else list(item)
            counts.append(len(tokens))
            truncated.append(len(tokens) > limit)
            if len(tokens) > limit:
                if refuse:
                    job.future.set_exception(TooLong(index, len(tokens), limit))
                    return None
                tokens = embedder.truncate(tokens, limit)
            sequences.append(tokens)
        if any(truncated):
            log.warning("[%s] %d input(s) truncated to %d tokens", job.label, sum(truncated), limit,
                        extra={"request_id": job.label})
        return _Prepared(job, sequences, counts, truncated)


def _cut(rows: np.ndarray, dim: int | None, normalize: bool) -> np.ndarray:
    """The first `dim` values of each row, L2-normalized again if the request is normalized (ollama's rule:
    normalizing the whole row first does not change the normalized prefix)."""
    if dim is None or dim >= rows.shape[1]:
        return np.ascontiguousarray(rows)
    cut = rows[:, :dim]
    if normalize:
        cut = cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(cut, dtype=np.float32)
