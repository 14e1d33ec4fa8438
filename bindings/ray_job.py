"""The corpus job on Ray Data, for corpora spread over a cluster's machines.

`read_parquet`/`read_json` → `map_batches` with `EmbedActor` (each actor loads the GGUF once and
embeds one batch per call with the same `embed_table` as the single-process job, so the output
schema is the same) → `write_parquet`. When an actor dies (a killed worker, a lost node) Ray
Data retries its batch, so no row is lost (tests/test_ray_job.py SIGKILLs one mid-run).

Ray Data runs its list, read and write tasks beside the actors, and they ask for logical CPUs
(`ListFiles` and each `Write` task: 1 CPU): if the actors hold every CPU of the cluster those tasks
never start and the job waits forever (seen on a 2-CPU machine: two 1-CPU actors up, `ListFiles`
queued, no batch in 5 minutes). So `IO_CPUS` logical CPUs are always left to them, and a plan that
does not fit is refused.

    granite-gguf embed-corpus corpus.parquet --model model.gguf --out out/ --ray         # local cluster
    granite-gguf embed-corpus /shared/corpus/ --model /models/m.gguf --out /shared/vectors/ --ray auto

Paths are local: the input, the model and the output folder must be at the same path on every node
(a shared filesystem, or the model copied to each machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset

from granite_gguf.bindings.corpus_job import InputFormat, embed_table, text_of
from granite_gguf.bindings.defaults import DEFAULT_BATCH_ROWS
from granite_gguf.errors import UserError

IO_CPUS = 1  # logical CPUs kept free for Ray Data's list, read and write tasks


class EmbedActor:
    """A Ray Data actor: the GGUF loaded once, then `__call__` per batch (a pyarrow table)."""

    def __init__(self, model: str, text_field: str, id_field: str, dim: int | None, max_tokens: int | None,
                 threads: int, gpu_layers: int) -> None:
        from granite_gguf.bindings.embedder import Embedder

        self.embedder = Embedder(model, n_threads=threads, max_tokens=max_tokens, gpu_layers=gpu_layers)
        self.text_field, self.id_field, self.dim = text_field, id_field, dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [text_of(value, i, self.text_field) for i, value in enumerate(batch.column(self.text_field).to_pylist())]
        return embed_table(self.embedder, batch.column(self.id_field).combine_chunks(), texts, self.dim)


@dataclass(frozen=True)
class RayPlan:
    actors: int
    threads_per_actor: int  # llama.cpp threads, and the logical CPUs each actor reserves
    gpus_per_actor: float

    @property
    def cpus(self) -> int:
        """Logical CPUs the job needs: the actors' and `IO_CPUS`."""
        return self.actors * self.threads_per_actor + IO_CPUS


def plan(resources: dict[str, float], actors: int | None, threads_per_actor: int) -> RayPlan:
    """Actors from the cluster's resources: one per GPU if there are GPUs, else as many as the CPUs
    hold after `IO_CPUS`; refused if the requested actors do not fit (Ray would wait for them forever)."""
    if threads_per_actor < 1:
        raise UserError(f"--threads must be positive, got {threads_per_actor}")
    if actors is not None and actors < 1:
        raise UserError(f"--actors must be positive, got {actors}")
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    count = actors or gpus or max(1, (cpus - IO_CPUS) // threads_per_actor)
    settings = RayPlan(count, threads_per_actor, min(1.0, gpus / count) if gpus else 0.0)
    if settings.cpus > cpus:
        raise UserError(f"{count} actor(s) of {threads_per_actor} thread(s) and {IO_CPUS} CPU for Ray Data's "
                        f"reads and writes need {settings.cpus} CPUs; the cluster has {cpus}")
    return settings


def start_ray(address: str | None, actors: int | None, threads_per_actor: int) -> None:
    """Connect to the cluster at `address`, or start a local one sized for `actors` (default: one per
    CPU after `IO_CPUS`)."""
    if address is None:
        # A local cluster stays on loopback and sends nothing out: without the first variable Ray advertises
        # the machine's network address to its own processes (ray/_private/services.py get_node_ip_address),
        # without the second it reports usage statistics over the internet. Both are read when ray is imported
        # and are inherited by the cluster's processes.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    # A local cluster's logical CPUs are scheduling tokens: the machine's, or enough for the actors asked for.
    local_cpus = max(os.cpu_count() or 1, (actors or 1) * threads_per_actor + IO_CPUS)
    local_only = address is None
    ray.init(address=address, num_cpus=local_cpus if local_only else None,
             _node_ip_address="127.0.0.1" if local_only else None,
             include_dashboard=False, log_to_driver=False, configure_logging=False)


def run_ray_job(input_path: Path, model: Path, out: Path, *, text_field: str = "text", id_field: str = "id",
                dim: int | None = None, batch_rows: int = DEFAULT_BATCH_ROWS, max_tokens: int | None = None,
                address: str | None = None, actors: int | None = None, threads_per_actor: int = 1,
                progress: bool = True) -> tuple[int, RayPlan]:
    """Run the job on the Ray cluster at `address` (None: a local one started here); rows written and the plan."""
    import ray

    if not input_path.exists():
        raise UserError(f"{input_path}: no such input file or folder")
    fmt = InputFormat.PARQUET if input_path.is_dir() else InputFormat.of(input_path)
    if fmt is InputFormat.TEXT:
        raise UserError("--ray reads Parquet or JSONL (rows need an id field); plain text has no ids")
    if batch_rows < 1:
        raise UserError(f"--batch-rows must be positive, got {batch_rows}")
    if not model.is_file():
        raise UserError(f"{model}: no such GGUF file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: not empty; a Ray job writes into a new or empty folder")
    start_ray(address, actors, threads_per_actor)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        settings = plan(ray.cluster_resources(), actors, threads_per_actor)
        if fmt is InputFormat.JSONL:
            dataset = ray.data.read_json(str(input_path.resolve()), lines=True)
        else:
            dataset = ray.data.read_parquet(str(input_path.resolve()))
        names = dataset.schema().names
        for field_name in (text_field, id_field):
            if field_name not in names:
                raise UserError(f"{input_path}: no field {field_name!r} (fields: {', '.join(names)}); "
                                "--ray needs a text and an id field")
        # One block per batch, so every actor gets work (a file read as one block would go to one actor).
        blocks = dataset.select_columns([id_field, text_field]).repartition(target_num_rows_per_block=batch_rows)
        embedded = blocks.map_batches(
            EmbedActor, fn_constructor_kwargs={
                "model": str(model.resolve()), "text_field": text_field, "id_field": id_field, "dim": dim,
                "max_tokens": max_tokens, "threads": settings.threads_per_actor,
                "gpu_layers": -1 if settings.gpus_per_actor else 0},
            batch_size=batch_rows, batch_format="pyarrow", concurrency=settings.actors,
            num_cpus=settings.threads_per_actor, num_gpus=settings.gpus_per_actor or None)
        embedded.write_parquet(str(out.resolve()))
    finally:
        ray.shutdown()
    return pyarrow.dataset.dataset(out, format="parquet").count_rows(), settings
