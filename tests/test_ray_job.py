"""`embed-corpus --ray` on a local Ray cluster (2 actors): the single-process job's rows, even with an actor killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from granite_gguf.bindings.corpus_job import read_output, run_job
from granite_gguf.bindings.ray_job import IO_CPUS, plan
from granite_gguf.errors import UserError
from tests.helpers import Workspace, cli_command
from tests.test_corpus_job import corpus_texts

COSINE = 0.99999  # f32 file
ROWS = 1200
BATCH_ROWS = 50


def test_plan_leaves_a_cpu_to_ray_data_and_refuses_actors_that_do_not_fit() -> None:
    assert plan({"CPU": 2.0}, None, 1).actors == 1  # not 2: Ray Data's list/read/write tasks need a CPU too
    assert plan({"CPU": 16.0}, None, 3).actors == (16 - IO_CPUS) // 3
    assert plan({"CPU": 3.0}, 2, 1).cpus == 3
    on_gpus = plan({"CPU": 8.0, "GPU": 2.0}, None, 1)
    assert (on_gpus.actors, on_gpus.gpus_per_actor) == (2, 1.0)
    with pytest.raises(UserError, match="need 3 CPUs; the cluster has 2"):
        plan({"CPU": 2.0}, 2, 1)  # Ray would wait for the second actor forever


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


def wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the job ended before {what}: {process.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:g} s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_job_equals_the_single_process_job_with_an_actor_killed(workspace: Workspace, tmp_path: Path) -> None:
    gguf = workspace.gguf("tiny-gemma3")
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"doc-{i:05d}" for i in range(ROWS)], "text": corpus_texts(ROWS)}), corpus,
                   row_group_size=300)
    run_job(corpus, gguf, tmp_path / "single", batch_rows=BATCH_ROWS, progress=False)
    single = read_output(tmp_path / "single")

    out = tmp_path / "ray-out"
    process = subprocess.Popen(
        cli_command("embed-corpus", str(corpus), "--model", str(gguf), "--out", str(out), "--batch-rows",
                    str(BATCH_ROWS), "--ray", "--actors", "2", "--no-progress"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(actor_pids()) == 2, "two EmbedActor processes", process)
        wait_for(lambda: any(out.glob("*.parquet")), "first output file", process)  # both actors are embedding
        victim = actor_pids()[0]
        os.kill(victim, signal.SIGKILL)
        done_at_kill = len(list(out.glob("*.parquet")))
        assert process.poll() is None and done_at_kill < ROWS // BATCH_ROWS, "the kill came after the last batch"
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert f"wrote {ROWS} rows to {out} (Ray Data, 2 actor(s) of 1 thread(s))" in output, output
    assert not Path(f"/proc/{victim}").exists()
    ray_rows = pq.read_table(out).sort_by("id")
    assert ray_rows.column("id").to_pylist() == single.column("id").to_pylist(), "rows lost or doubled"
    assert ray_rows.schema == single.schema
    assert ray_rows.column("tokens").equals(single.column("tokens"))
    assert ray_rows.column("truncated").equals(single.column("truncated"))
    ours = np.array(ray_rows.column("vector").to_pylist(), dtype=np.float32)
    theirs = np.array(single.column("vector").to_pylist(), dtype=np.float32)
    assert np.min(np.sum(ours * theirs, axis=1)) >= COSINE  # both L2-normalized


def test_ray_refuses_plain_text_before_starting_a_cluster(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one\ntwo\n")
    result = subprocess.run(cli_command("embed-corpus", str(corpus), "--model", str(tmp_path / "none.gguf"), "--out",
                                        str(tmp_path / "out"), "--ray"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and "plain text has no ids" in result.stderr
