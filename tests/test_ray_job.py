"""`embed-corpus --ray` on a local Ray cluster (2 actors): the single-process job's rows, even with an actor killed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from granite_gguf.bindings.corpus_job import read_output, run_job
from tests.conftest import Workspace
from tests.test_corpus_job import corpus_texts

pytestmark = [pytest.mark.slow, pytest.mark.ray]

COSINE = 0.99999  # f32 file
ROWS = 1200


def actor_pids() -> list[int]:
    """Processes of Ray actors running EmbedActor (Ray names worker processes after their actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"EmbedActor" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_ray_job_equals_the_single_process_job_with_an_actor_killed(workspace: Workspace, tmp_path: Path) -> None:
    gguf = workspace.gguf("tiny-gemma3")
    corpus = tmp_path / "corpus.parquet"
    texts = corpus_texts(ROWS)
    pq.write_table(pa.table({"id": [f"doc-{i:05d}" for i in range(ROWS)], "text": texts}), corpus,
                   row_group_size=300)
    run_job(corpus, gguf, tmp_path / "single", batch_rows=50, progress=False)
    single = read_output(tmp_path / "single")

    out = tmp_path / "ray-out"
    process = subprocess.Popen(
        [sys.executable, "-m", "granite_gguf.cli", "embed-corpus", str(corpus), "--model", str(gguf), "--out",
         str(out), "--batch-rows", "50", "--ray", "--actors", "2", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(actor_pids()) < 2:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "no two EmbedActor processes appeared"
            time.sleep(0.1)
        seed = random.randrange(2**32)
        time.sleep(random.Random(seed).uniform(0.5, 1.5))
        victim = actor_pids()[0]
        assert process.poll() is None, f"seed {seed}: the job ended before the kill; make the corpus longer"
        os.kill(victim, signal.SIGKILL)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert f"wrote {ROWS} rows to {out} (Ray Data, 2 actor(s)" in output, output
    ray_rows = pq.read_table(out).sort_by("id")
    assert ray_rows.column("id").to_pylist() == single.column("id").to_pylist(), f"seed {seed}: rows lost or doubled"
    assert ray_rows.column("tokens").equals(single.column("tokens"))
    assert ray_rows.column("truncated").equals(single.column("truncated"))
    ours = np.array(ray_rows.column("vector").to_pylist(), dtype=np.float32)
    theirs = np.array(single.column("vector").to_pylist(), dtype=np.float32)
    assert ray_rows.schema.field("vector").type == single.schema.field("vector").type
    assert np.min(np.sum(ours * theirs, axis=1)) >= COSINE
