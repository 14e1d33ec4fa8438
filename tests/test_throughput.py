"""The benchmark harness behind scripts/bench_embed.py and scripts/quality_table.py: runners in their own
processes, timed on the same texts round by round; a runner that dies is named, and shutting down
after it does not fail (the BrokenPipeError that once cost an 8,192-token run its table)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from granite_gguf.throughput import Bench, Kind, Runner, count_tokens, make_documents
from tests.helpers import Workspace

FAMILY = "tiny-gemma3"


def test_documents_have_the_asked_token_length(workspace: Workspace) -> None:
    checkpoint = workspace.checkpoint(FAMILY)
    docs = make_documents(checkpoint, 128, 5)
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    lengths = [len(tokenizer.encode(doc).ids) for doc in docs]
    assert len(set(docs)) == 5
    assert all(abs(length - 128) <= 4 for length in lengths), lengths  # decode/encode may merge at the cut
    assert count_tokens(checkpoint, docs) == sum(lengths)


@pytest.mark.slow
def test_runners_are_timed_in_turn_and_a_dead_runner_is_named(workspace: Workspace) -> None:
    gguf = str(workspace.gguf(FAMILY, "f32"))
    runners = [Runner("one-context", Kind.GGUF, gguf, 1, workers=1), Runner("two-contexts", Kind.GGUF, gguf, 2, workers=2)]
    order: list[tuple[int, str]] = []
    with Bench(runners) as bench:
        seconds = bench.rounds(["a short text", "another one, a little longer"] * 8, 4, 2,
                               lambda round_index, name, _: order.append((round_index, name)))
        assert list(seconds) == ["one-context", "two-contexts"]
        assert all(len(values) == 2 and all(v > 0 for v in values) for values in seconds.values())
        assert order == [(1, "one-context"), (1, "two-contexts"), (2, "one-context"), (2, "two-contexts")]
        with pytest.raises(RuntimeError, match="runner one-context exited with code 1"):
            bench.rounds(None, 4, 1)  # type: ignore[arg-type]  # the runner's encode raises and its process ends
    # leaving the block closed both runners, the dead one included, without a BrokenPipeError
