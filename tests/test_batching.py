"""The Batcher on real llama.cpp contexts: shared calls, rows routed back, failures and slow requests isolated."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from granite_gguf.bindings.batching import Batcher, LimitTooSmall, Options, Overloaded, TooLong
from granite_gguf.bindings.embedder import Embedder, Embeddings, LongInputs
from tests.helpers import Workspace

pytestmark = pytest.mark.slow

COSINE = 0.99999  # f32 file, packed differently from the one-by-one reference
MAX_TOKENS = 512
LONG = "Lorem ipsum dolor sit amet, 42 Grüße. " * 60  # over MAX_TOKENS


@pytest.fixture(scope="module")
def gguf(workspace: Workspace) -> Path:
    return workspace.gguf("tiny-gemma3")


@pytest.fixture(scope="module")
def reference(gguf: Path) -> Iterator[Embedder]:
    with Embedder(gguf, max_tokens=MAX_TOKENS) as embedder:
        yield embedder


def requests_texts(count: int) -> list[list[str]]:
    return [[f"request {i}, text {j}: " + "word " * (3 + 7 * ((i + j) % 5)) for j in range(1 + i % 3)]
            for i in range(count)]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def blocker(count: int = 64) -> list[str]:
    """A request that keeps a worker busy for a while (long inputs, each a decode of its own)."""
    return [f"{i} " + "slow request " * 200 for i in range(count)]


def test_queued_requests_share_calls_and_get_their_own_rows(gguf: Path, reference: Embedder) -> None:
    jobs = requests_texts(40)
    embedder = Embedder(gguf, max_tokens=MAX_TOKENS)
    with mock.patch.object(embedder, "embed", wraps=embedder.embed) as spy:
        batcher = Batcher([embedder])
        try:
            first = batcher.submit(blocker())
            futures = [batcher.submit(texts, label=f"r{i}") for i, texts in enumerate(jobs)]
            results = [future.result(timeout=120) for future in futures]
            first.result(timeout=120)
        finally:
            batcher.close()
    # the 40 requests queued behind the first one went into at most two shared calls
    assert spy.call_count <= 3, spy.call_count
    for texts, result in zip(jobs, results):
        assert result.vectors.shape == (len(texts), reference.dimension)
        assert min_cosine(result.vectors, reference.encode(texts, batch_size=1)) >= COSINE
        assert result.token_counts == [len(reference.tokenize(text)) for text in texts]


def test_a_failing_request_does_not_touch_the_others_in_its_batch(gguf: Path, reference: Embedder) -> None:
    strict = Options(long_inputs=LongInputs.ERROR)
    jobs = requests_texts(12)
    jobs[5] = ["fine", LONG]  # refused under long_inputs=error, and only this request
    batcher = Batcher([Embedder(gguf, max_tokens=MAX_TOKENS)])
    try:
        first = batcher.submit(blocker())
        futures = [batcher.submit(texts, strict) for texts in jobs]
        for i, (texts, future) in enumerate(zip(jobs, futures)):
            if i == 5:
                with pytest.raises(TooLong, match="input 1 has .* tokens, more than the limit of 512") as refused:
                    future.result(timeout=120)
                assert refused.value.tokens == len(reference.tokenize(LONG))
                continue
            assert min_cosine(future.result(timeout=120).vectors, reference.encode(texts, batch_size=1)) >= COSINE
        first.result(timeout=120)
        after = batcher.submit(["still working"]).result(timeout=120)
        assert min_cosine(after.vectors, reference.encode(["still working"])) >= COSINE
    finally:
        batcher.close()


def test_options_are_kept_per_request(gguf: Path, reference: Embedder, workspace: Workspace) -> None:
    batcher = Batcher([Embedder(gguf, max_tokens=MAX_TOKENS)])
    try:
        first = batcher.submit(blocker())
        plain = batcher.submit(["a b c"])
        raw = batcher.submit(["a b c"], Options(normalize=False))
        cut = batcher.submit([LONG, "x"])
        untrained = batcher.submit(["Matryoshka", "doll"], Options(truncate_dim=20))  # not a trained width: served
        limited = batcher.submit([LONG, "x"], Options(max_tokens=40))
        tokens = batcher.submit([tuple(reference.tokenize("a b c"))])
        with pytest.raises(LimitTooSmall):
            batcher.submit(["x"], Options(max_tokens=len(reference.tokenize(""))))  # room for the BOS only
        first.result(timeout=120)
        full = reference.encode(["Matryoshka", "doll"], batch_size=1)[:, :20]
        np.testing.assert_allclose(untrained.result(timeout=120).vectors,
                                   full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
        short = limited.result(timeout=120)
        assert short.truncated == [True, False] and short.token_counts[0] == len(reference.tokenize(LONG))
        cut40 = reference.encode_tokens([reference.truncate(reference.tokenize(LONG), 40)])
        assert min_cosine(short.vectors[:1], cut40) >= COSINE
        assert min_cosine(tokens.result(timeout=120).vectors, reference.encode(["a b c"])) >= COSINE
        assert min_cosine(plain.result(timeout=120).vectors, reference.encode(["a b c"])) >= COSINE
        unnormalized = raw.result(timeout=120).vectors
        np.testing.assert_allclose(unnormalized, reference.encode(["a b c"], normalize_embeddings=False), atol=1e-5)
        assert cut.result(timeout=120).truncated == [True, False]
    finally:
        batcher.close()


def test_two_workers_short_requests_pass_a_slow_one(gguf: Path) -> None:
    batcher = Batcher([Embedder(gguf, max_tokens=MAX_TOKENS, n_threads=1) for _ in range(2)])
    try:
        slow = batcher.submit(blocker(256))
        time.sleep(0.05)  # let one worker take it
        short = [batcher.submit(texts) for texts in requests_texts(20)]
        for future in short:
            future.result(timeout=120)
        assert not slow.done(), "the short requests waited for the slow one"
        assert len(slow.result(timeout=300).vectors) == 256
    finally:
        batcher.close()


def test_a_full_queue_refuses_instead_of_growing(gguf: Path) -> None:
    batcher = Batcher([Embedder(gguf, max_tokens=MAX_TOKENS)], max_queued_inputs=10)
    try:
        busy = batcher.submit(blocker(128))
        time.sleep(0.05)  # the worker has taken it; the queue is empty again
        queued = batcher.submit(["x"] * 8)
        with pytest.raises(Overloaded, match="at most 10"):
            batcher.submit(["y"] * 3)
        busy.result(timeout=300)
        assert len(queued.result(timeout=120).vectors) == 8
    finally:
        batcher.close()


def test_idle_workers_split_a_burst_between_them(gguf: Path, reference: Embedder) -> None:
    """A burst queued while both workers wait is shared: no worker takes more than its half, both take work."""
    taken: list[tuple[str, int]] = []
    record = threading.Lock()

    def on_batch(inputs: int) -> None:
        with record:
            taken.append((threading.current_thread().name, inputs))

    batcher = Batcher([Embedder(gguf, max_tokens=MAX_TOKENS, n_threads=1) for _ in range(2)], on_batch=on_batch)
    try:
        deadline = time.monotonic() + 30
        while batcher.idle_workers < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        jobs = [[f"burst {i}: " + "word " * (5 + i)] for i in range(8)]
        with batcher._ready:  # the whole burst is queued before either worker wakes
            futures = [batcher.submit(texts) for texts in jobs]
        results = [future.result(timeout=120) for future in futures]
    finally:
        batcher.close()
    assert sorted(inputs for _, inputs in taken) == [4, 4], taken
    assert len({name for name, _ in taken}) == 2
    for texts, result in zip(jobs, results):
        assert min_cosine(result.vectors, reference.encode(texts)) > COSINE


def test_each_decode_answers_its_requests_before_the_next_one_starts(gguf: Path, reference: Embedder) -> None:
    """One worker, a backlog of passages that fill a decode each: a decode per passage, each answered when its
    decode ends (not when the worker's whole backlog is done)."""
    passages = [[f"passage {i}: " + "slow request " * 150] for i in range(6)]
    done_at_batch: list[int] = []
    futures: list[Future[Embeddings]] = []
    batcher = Batcher([Embedder(gguf, max_tokens=MAX_TOKENS, n_threads=1)],
                      on_batch=lambda inputs: done_at_batch.append(sum(f.done() for f in futures)))
    try:
        assert all(len(batcher.embedders[0].tokenize(texts[0])) > MAX_TOKENS // 2 for texts in passages)
        with batcher._ready:  # the backlog is queued before the worker wakes
            futures += [batcher.submit(texts) for texts in passages]
        results = [future.result(timeout=300) for future in futures]
    finally:
        batcher.close()
    assert done_at_batch == [0, 1, 2, 3, 4, 5]
    for texts, result in zip(passages, results):
        assert min_cosine(result.vectors, reference.encode(texts)) > COSINE


def test_a_shared_call_that_fails_is_retried_without_answering_a_refused_request_twice(gguf: Path,
                                                                                       reference: Embedder) -> None:
    """A shared call fails (a bug) in a batch that also holds a request _prepare refused: every other request is
    retried on its own and answered, the refused one keeps its TooLong, and the worker lives on."""
    strict = Options(long_inputs=LongInputs.ERROR)
    jobs = [["one"], ["fine", LONG], ["three"], ["four"]]
    embedder = Embedder(gguf, max_tokens=MAX_TOKENS)
    real = embedder.encode_tokens

    def fails_when_shared(sequences: list[list[int]], **kwargs: object) -> np.ndarray:
        if len(sequences) > 1:
            raise RuntimeError("a planted bug in the shared call")
        return real(sequences, **kwargs)  # type: ignore[arg-type]

    batcher = Batcher([embedder])
    try:
        with mock.patch.object(embedder, "encode_tokens", side_effect=fails_when_shared):
            with batcher._ready:  # one batch: queued before the worker wakes
                futures = [batcher.submit(texts, strict) for texts in jobs]
            with pytest.raises(TooLong):
                futures[1].result(timeout=120)
            for texts, future in zip(jobs, futures):
                if texts is not jobs[1]:
                    assert min_cosine(future.result(timeout=120).vectors, reference.encode(texts)) >= COSINE
        after = batcher.submit(["still working"]).result(timeout=120)
        assert min_cosine(after.vectors, reference.encode(["still working"])) >= COSINE
    finally:
        batcher.close()


def test_a_request_whose_tokenizing_fails_gets_the_error_and_the_worker_lives_on(gguf: Path,
                                                                                 reference: Embedder) -> None:
    """A bug while a request is tokenized (outside any shared call): that request gets the exception, the others of
    its decode and later ones are answered."""
    embedder = Embedder(gguf, max_tokens=MAX_TOKENS)
    real = embedder.tokenize

    def fails_on_one(text: str, add_special: bool = True) -> list[int]:
        if text == "planted":
            raise RuntimeError("a planted bug in tokenize")
        return real(text, add_special)

    batcher = Batcher([embedder])
    try:
        with mock.patch.object(embedder, "tokenize", side_effect=fails_on_one):
            with batcher._ready:  # one decode: queued before the worker wakes
                futures = [batcher.submit(texts) for texts in (["one"], ["planted"], ["three"])]
            with pytest.raises(RuntimeError, match="planted"):
                futures[1].result(timeout=120)
            for texts, future in zip((["one"], ["three"]), (futures[0], futures[2])):
                assert min_cosine(future.result(timeout=120).vectors, reference.encode(texts)) >= COSINE
        after = batcher.submit(["still working"]).result(timeout=120)
        assert min_cosine(after.vectors, reference.encode(["still working"])) >= COSINE
    finally:
        batcher.close()
