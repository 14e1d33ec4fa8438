"""`granite-gguf embed-corpus`: three input formats, the output schema, SIGKILL and resume, refusals."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from granite_gguf.bindings.corpus_job import read_output, run_job
from granite_gguf.bindings.embedder import Embedder
from granite_gguf.probes import probe_texts
from tests.helpers import Workspace, cli_command

pytestmark = pytest.mark.slow

COSINE = 0.99999  # f32 file
MAX_TOKENS = 128


def corpus_texts(count: int) -> list[str]:
    probes = [text for text in probe_texts() if "\n" not in text and "\r" not in text]  # one per line in .txt
    return [f"{i}: {probes[i % len(probes)][:100]}" for i in range(count)]


def command(*args: str) -> list[str]:
    return cli_command("embed-corpus", *args)


def test_jsonl_parquet_and_text_give_the_embedders_rows(workspace: Workspace, tmp_path: Path) -> None:
    gguf = workspace.gguf("tiny-gemma3")
    texts = corpus_texts(100)
    with Embedder(gguf, max_tokens=MAX_TOKENS) as embedder:
        long_text = "Lorem ipsum dolor sit amet. " * (MAX_TOKENS // 4)  # past max_tokens
        texts[77] = long_text
        expected = embedder.encode(texts, batch_size=1)
        tokens = [len(embedder.tokenize(text)) for text in texts]
    ids = [f"doc-{i:04d}" for i in range(len(texts))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in zip(ids, texts)))
    pq.write_table(pa.table({"body": texts, "id": ids}), tmp_path / "in.parquet", row_group_size=40)
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts))
    for name in ("in.jsonl", "in.parquet", "in.txt"):
        out = tmp_path / f"out-{name}"
        args = [str(tmp_path / name), "--model", str(gguf), "--out", str(out), "--batch-rows", "40",
                "--max-tokens", str(MAX_TOKENS), "--no-progress"]
        args += [] if name.endswith(".txt") else ["--text-field", "body"]
        result = subprocess.run(command(*args), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"wrote 100 rows in 3 shard(s) to {out}"
        assert sorted(p.name for p in out.iterdir()) == ["_job.json", "part-000000.parquet", "part-000001.parquet",
                                                         "part-000002.parquet"]
        table = read_output(out)
        assert table.schema.field("vector").type == pa.list_(pa.float32(), 64)
        assert table.column("id").to_pylist() == (list(range(100)) if name.endswith(".txt") else ids)
        vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
        assert np.min(np.sum(vectors * expected, axis=1)) >= COSINE, name
        assert table.column("tokens").to_pylist() == tokens
        assert table.column("truncated").to_pylist() == [i == 77 for i in range(100)]
        assert pq.ParquetFile(out / "part-000000.parquet").metadata.num_row_groups == 1


def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(workspace: Workspace,
                                                                           tmp_path: Path) -> None:
    gguf = workspace.gguf("tiny-o200k")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i * 7, "text": t}) + "\n" for i, t in enumerate(corpus_texts(800))))
    whole = run_job(corpus, gguf, tmp_path / "whole", batch_rows=40, progress=False)
    assert (whole.rows, whole.embedded, whole.shards) == (800, 800, 20)
    expected = read_output(tmp_path / "whole")

    seed = random.randrange(2**32)
    out = tmp_path / "killed"
    args = command(str(corpus), "--model", str(gguf), "--out", str(out), "--batch-rows", "40", "--no-progress")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list(out.glob("part-*.parquet")):  # started embedding
        assert process.poll() is None, "the job ended before writing a shard"
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.5))
    assert process.poll() is None, f"seed {seed}: finished before the kill; make the corpus longer"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    done_before = len(list(out.glob("part-*.parquet")))
    assert 0 < done_before < 20, f"seed {seed}: {done_before} shards"

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({done_before * 40} found done by an earlier run)" in resumed.stdout, resumed.stdout
    table = read_output(out)
    assert table.column("id").to_pylist() == expected.column("id").to_pylist(), f"seed {seed}"
    assert table.column("tokens").equals(expected.column("tokens"))
    vectors = np.array(table.column("vector").to_pylist())
    assert np.min(np.sum(vectors * np.array(expected.column("vector").to_pylist()), axis=1)) >= COSINE
    assert sorted(p.name for p in out.iterdir()) == ["_job.json"] + [f"part-{i:06d}.parquet" for i in range(20)]


def test_bad_inputs_and_a_changed_job_are_refused(workspace: Workspace, tmp_path: Path) -> None:
    gguf = workspace.gguf("tiny-gemma3")
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a"}\n{"text": "b"}\n')
    out = tmp_path / "out"
    assert subprocess.run(command(str(good), "--model", str(gguf), "--out", str(out), "--no-progress"),
                          capture_output=True, timeout=300).returncode == 0
    assert read_output(out).column("id").to_pylist() == [0, 1]  # no id field: row numbers
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "data.csv").write_text("text\na\n")
    cases = [
        ([str(tmp_path / "bad.jsonl")], "row 1: field 'text' is missing, not a string"),
        ([str(tmp_path / "broken.jsonl")], "line 2: not valid JSON"),
        ([str(tmp_path / "data.csv")], "unknown input type '.csv'"),
        ([str(tmp_path / "missing.jsonl")], "no such input file"),
        ([str(good), "--dim", "20"], "not a Matryoshka dimension"),
    ]
    for i, (extra, message) in enumerate(cases):
        result = subprocess.run(command(*extra, "--model", str(gguf), "--out", str(tmp_path / f"new-{i}")),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    changed = subprocess.run(command(str(good), "--model", str(gguf), "--out", str(out), "--batch-rows", "1"),
                             capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "holds shards of another job (different batch_rows)" in changed.stderr
    assert not list(tmp_path.glob("new-*/part-*"))
