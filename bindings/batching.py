"""Dynamic batching: requests from many connections share llama.cpp decodes, on one or more contexts.

A llama.cpp context is not thread-safe, so each worker thread owns one Embedder. A worker fills one
decode at a time, as llama-server's slots share a batch: it takes the oldest queued request, then the
next ones of the same options while the decode has room (`Embedder.batch_tokens` tokens) and its
share of the queue allows (a burst that arrives while several workers wait is split between them, at
most `max_batch_inputs` inputs each). It tokenizes and checks each request on its own (a request with
an input too long under `long_inputs="error"` gets its error here, without touching the others),
hands the decode's sequences to one `Embedder.encode_tokens` call, and answers its requests when the
call returns: a request waits for the decodes ahead of it in the queue, never for a worker's whole
backlog. Rows are cut back per request and to each request's dimension. Requests with different
normalization, long-input mode or token limit go into separate calls; `long_inputs="chunk"` (several
windows per input) goes alone through `Embedder.embed`. When a shared call fails anyway (a bug),
each request of it is run on its own, so only the request at fault gets the error. A request whose
vectors come back NaN or infinite gets the Embedder's `NonFiniteVectorError`, logged: the model file
is at fault, not the client.
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

DEFAULT_MAX_BATCH_INPUTS = 256  # inputs per shared call, at most (the token budget usually ends one first)
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

    @property
    def tokens(self) -> int:
        """What the job adds to a decode."""
        return sum(map(len, self.sequences))


_Key = tuple[LongInputs, bool, int | None]


def _key(job: _Job) -> _Key:
    """Requests with equal keys can share a call (the dimension is cut per request afterwards)."""
    return job.options.long_inputs, job.options.normalize, job.options.max_tokens


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
        self._idle = 0  # workers waiting in _first
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

    def _first(self) -> tuple[_Job, int] | None:
        """Block until a job is queued; the oldest, and this worker's share of the queue in inputs: the queue split
        evenly between the workers waiting (this one included, at most `max_batch_inputs`), so a burst that arrives
        while all wait is spread over all of them. None when stopping with nothing left."""
        with self._ready:
            self._idle += 1
            while not self._jobs and not self._stopping:
                self._ready.wait()
            self._idle -= 1
            if not self._jobs:
                return None
            share = -(-self._queued_inputs // (self._idle + 1))  # ceil
            if len(self._jobs) > 1:
                self._ready.notify()  # the rest is another waiting worker's
            return self._pop(), min(share, self.max_batch_inputs)

    def _next(self, key: _Key) -> _Job | None:
        """The oldest queued job if it can join the decode being filled (same options, not chunked), else None at once."""
        with self._ready:
            if not self._jobs or _key(self._jobs[0]) != key or self._chunked(self._jobs[0]):
                return None
            return self._pop()

    def _pop(self) -> _Job:
        job = self._jobs.popleft()
        self._queued_inputs -= len(job.inputs)
        return job

    def _work(self, embedder: Embedder) -> None:
        """Decode after decode: the oldest request, then the next ones of the same options while the decode
        has room (`Embedder.batch_tokens`) and the worker's share allows; each decode's requests are answered
        when it ends, so a request waits for one decode, not for a worker's whole backlog."""
        held: _Prepared | None = None  # tokenized, but past the last decode's budget: the next decode's first
        share = 0
        while True:
            if held is None:
                first_taken = self._first()
                if first_taken is None:
                    return
                job, share = first_taken
                if not job.future.set_running_or_notify_cancel():
                    continue
                if self._chunked(job):
                    self._report([job])
                    self._run_chunked(embedder, job)
                    continue
                first = self._prepare(embedder, job)
                if first is None:
                    continue
            else:
                first, held = held, None
            group = [first]
            tokens, inputs = first.tokens, len(first.job.inputs)
            while tokens < embedder.batch_tokens and inputs < share:
                next_job = self._next(_key(first.job))
                if next_job is None:
                    break
                job = next_job
                if not job.future.set_running_or_notify_cancel() or (prepared := self._prepare(embedder, job)) is None:
                    continue
                if tokens + prepared.tokens > embedder.batch_tokens:
                    held = prepared
                    break
                group.append(prepared)
                tokens, inputs = tokens + prepared.tokens, inputs + len(job.inputs)
            self._report([p.job for p in group])
            self._run(embedder, group)

    def _report(self, jobs: list[_Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(sum(len(job.inputs) for job in jobs))

    def _run(self, embedder: Embedder, group: list[_Prepared]) -> None:
        """One shared call for the group's sequences (requests of one set of options); when it fails, each request
        on its own, so that only the request at fault gets the error."""
        try:
            sequences = [seq for prepared in group for seq in prepared.sequences]
            vectors = (embedder.encode_tokens(sequences, normalize_embeddings=group[0].job.options.normalize)
                       if sequences else np.zeros((0, embedder.dimension), np.float32))
        except Exception as exc:
            if len(group) > 1:
                for prepared in group:
                    self._run(embedder, [prepared])
            else:
                self._fail(group[0].job, exc)
            return
        start = 0
        for prepared in group:
            end = start + len(prepared.sequences)
            rows = _cut(vectors[start:end], prepared.job.options.truncate_dim, prepared.job.options.normalize)
            prepared.job.future.set_result(Embeddings(rows, prepared.token_counts, prepared.truncated))  # finite: checked
            start = end

    def _run_chunked(self, embedder: Embedder, job: _Job) -> None:
        """A request under long_inputs="chunk": its windows through `Embedder.embed`, alone."""
        try:
            texts = [text for text in job.inputs if isinstance(text, str)]
            result = embedder.embed(texts, long_inputs=LongInputs.CHUNK, normalize_embeddings=job.options.normalize)
        except Exception as exc:
            self._fail(job, exc)
            return
        rows = _cut(result.vectors, job.options.truncate_dim, job.options.normalize)
        job.future.set_result(Embeddings(rows, result.token_counts, result.truncated))

    def _fail(self, job: _Job, exc: Exception) -> None:
        if not isinstance(exc, UserError) or isinstance(exc, NonFiniteVectorError):  # bad input is the client's to fix
            log.exception("[%s] embedding failed", job.label, extra={"request_id": job.label})
        job.future.set_exception(exc)

    def _chunked(self, job: _Job) -> bool:
        """Text requests under long_inputs="chunk" and no limit of their own go through `Embedder.embed`."""
        return (job.options.long_inputs is LongInputs.CHUNK and job.options.max_tokens is None
                and all(isinstance(item, str) for item in job.inputs))

    def _prepare(self, embedder: Embedder, job: _Job) -> _Prepared | None:
        """The job's sequences, each cut to its limit (special tokens kept), or None with its error set. It runs
        outside any shared call, so an exception here (a bug) is the job's answer: the worker thread lives on."""
        try:
            return self._sequences(embedder, job)
        except Exception as exc:
            self._fail(job, exc)
            return None

    def _sequences(self, embedder: Embedder, job: _Job) -> _Prepared | None:
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
