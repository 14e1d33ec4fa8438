"""Dynamic batching: requests from many connections share llama.cpp decodes, on one or more contexts.

A llama.cpp context is not thread-safe, so each worker thread owns one Embedder. A worker takes
every request waiting in the queue (up to `max_batch_inputs` inputs), and hands their inputs to one
`Embedder.embed` call, which sorts them by length and packs them into shared decodes up to its token
budget; the rows are then cut back per request, in order. Requests with different options
(dimension, normalization, long-input mode) go into separate calls. When a shared call fails (a
request with an input too long under `long_inputs="error"`, or a bug), each request of it is run on
its own, so only the request at fault gets the error.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from granite_gguf.bindings.embedder import Embedder, Embeddings, LongInputs
from granite_gguf.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_INPUTS = 256  # inputs per shared call: bounds the wait of a request behind others
DEFAULT_MAX_QUEUED_INPUTS = 16384  # past this, new requests are refused (Overloaded) instead of queued


class Overloaded(Exception):
    """The queue holds `max_queued_inputs` inputs already; the caller should answer 503."""


@dataclass(frozen=True)
class Options:
    """Per-request settings of `Embedder.embed`; requests with equal options can share a call."""

    truncate_dim: int | None = None
    long_inputs: LongInputs = LongInputs.TRUNCATE
    normalize: bool = True


@dataclass
class _Job:
    texts: list[str]
    options: Options
    label: str  # for the log: the request id
    future: Future[Embeddings] = field(default_factory=Future)


class Batcher:
    """Queues `submit` calls from any thread; one worker thread per Embedder runs them in shared batches."""

    def __init__(self, embedders: Sequence[Embedder], *, max_batch_inputs: int = DEFAULT_MAX_BATCH_INPUTS,
                 max_queued_inputs: int = DEFAULT_MAX_QUEUED_INPUTS) -> None:
        if not embedders:
            raise ValueError("a Batcher needs at least one Embedder")
        self.embedders = list(embedders)
        self.max_batch_inputs = max_batch_inputs
        self.max_queued_inputs = max_queued_inputs
        self._jobs: deque[_Job] = deque()
        self._queued_inputs = 0
        self._ready = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, args=(embedder,), name=f"embed-worker-{i}", daemon=True)
                         for i, embedder in enumerate(self.embedders)]
        for thread in self._threads:
            thread.start()

    def submit(self, texts: list[str], options: Options = Options(), label: str = "") -> Future[Embeddings]:
        """Queue one request; its future resolves to the request's own rows, token counts and flags."""
        job = _Job(list(texts), options, label)
        with self._ready:
            if self._stopping:
                raise RuntimeError("the batcher is closed")
            if self._queued_inputs + len(job.texts) > self.max_queued_inputs and self._jobs:
                raise Overloaded(f"{self._queued_inputs} inputs are queued; at most {self.max_queued_inputs}")
            self._jobs.append(job)
            self._queued_inputs += len(job.texts)
            self._ready.notify()
        return job.future

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
        """Block until work arrives; take the queued jobs that fit in one batch (always at least one)."""
        with self._ready:
            while not self._jobs and not self._stopping:
                self._ready.wait()
            batch: list[_Job] = []
            inputs = 0
            while self._jobs and (not batch or inputs + len(self._jobs[0].texts) <= self.max_batch_inputs):
                job = self._jobs.popleft()
                batch.append(job)
                inputs += len(job.texts)
            self._queued_inputs -= inputs
            return batch

    def _work(self, embedder: Embedder) -> None:
        while batch := self._next_batch():
            groups: dict[Options, list[_Job]] = {}
            for job in batch:
                if job.future.set_running_or_notify_cancel():
                    groups.setdefault(job.options, []).append(job)
            for options, jobs in groups.items():
                self._run(embedder, options, jobs)

    def _run(self, embedder: Embedder, options: Options, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        try:
            result = embedder.embed(texts, truncate_dim=options.truncate_dim, long_inputs=options.long_inputs,
                                    normalize_embeddings=options.normalize)
        except Exception as exc:
            if len(jobs) > 1:  # find the request at fault: each on its own
                for job in jobs:
                    self._run(embedder, options, [job])
                return
            if not isinstance(exc, UserError):  # bad input is the client's to fix; anything else is logged
                log.exception("[%s] embedding failed", jobs[0].label)
            jobs[0].future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            end = start + len(job.texts)
            job.future.set_result(Embeddings(np.ascontiguousarray(result.vectors[start:end]),
                                             result.token_counts[start:end], result.truncated[start:end]))
            start = end
