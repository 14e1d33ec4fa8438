"""The corpus job on Ray Data, for corpora spread over a cluster's machines.

`read_parquet`/`read_json` → `map_batches` with `EmbedActor` (each actor loads the GGUF once and
embeds one batch per call with the same `embed_table` as the single-process job, so the output
schema is the same) → `write_parquet`. Actors are sized by the cluster's resources: one per GPU
where the cluster has GPUs, else one per `threads_per_actor` CPUs. An actor that dies (a killed
worker, a lost node) is restarted and its batches are retried, so no row is lost.

    granite-gguf embed-corpus corpus.parquet --model model.gguf --out out/ --ray            # local cluster
    granite-gguf embed-corpus s3://bucket/corpus/ --model /models/m.gguf --out s3://bucket/vectors/ --ray auto
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from granite_gguf.bindings.corpus_job import DEFAULT_BATCH_ROWS, InputFormat, embed_table, text_of
from granite_gguf.errors import UserError


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
    cpus_per_actor: float
    gpus_per_actor: float


def plan(resources: dict[str, float], actors: int | None, threads_per_actor: int) -> RayPlan:
    """Actors from the cluster's resources: one per GPU if there are GPUs, else CPUs / threads_per_actor."""
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus:
        count = actors or gpus
        return RayPlan(count, max(1, cpus // count), 1.0 if count <= gpus else gpus / count)
    count = actors or max(1, cpus // threads_per_actor)
    return RayPlan(count, max(1, cpus // count) if actors else threads_per_actor, 0.0)


def run_ray_job(input_path: str, model: Path, out: str, *, text_field: str = "text", id_field: str = "id",
                dim: int | None = None, batch_rows: int = DEFAULT_BATCH_ROWS, max_tokens: int | None = None,
                address: str | None = None, actors: int | None = None,
                threads_per_actor: int = 1, progress: bool = True) -> tuple[int, RayPlan]:
    """Run the job on the Ray cluster at `address` (None: a local one started here); rows written and the plan."""
    import ray

    folder = input_path.endswith("/") or Path(input_path).is_dir()
    fmt = InputFormat.PARQUET if folder else InputFormat.of(Path(input_path))
    if fmt is InputFormat.TEXT:
        raise UserError("--ray reads Parquet or JSONL (rows need an id field); plain text has no ids")
    if not model.is_file():
        raise UserError(f"{model}: no such GGUF file")
    local_out = "://" not in out
    if local_out and Path(out).exists() and any(Path(out).iterdir()):
        raise UserError(f"{out}: not empty; a Ray job writes into a new or empty folder")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        settings = plan(ray.cluster_resources(), actors, threads_per_actor)
        if fmt is InputFormat.JSONL:
            dataset = ray.data.read_json(input_path, lines=True)
        else:
            dataset = ray.data.read_parquet(input_path)
        names = dataset.schema().names
        for field_name in (text_field, id_field):
            if field_name not in names:
                raise UserError(f"{input_path}: no field {field_name!r} (fields: {', '.join(names)}); "
                                "--ray needs a text and an id field")
        remote: dict[str, Any] = {"max_restarts": -1, "max_task_retries": -1}  # a killed actor is replaced
        embedded = dataset.select_columns([id_field, text_field]).map_batches(
            EmbedActor, fn_constructor_kwargs={
                "model": str(model.resolve()), "text_field": text_field, "id_field": id_field, "dim": dim, "max_tokens": max_tokens,
                "threads": int(settings.cpus_per_actor), "gpu_layers": -1 if settings.gpus_per_actor else 0},
            batch_size=batch_rows, batch_format="pyarrow", concurrency=settings.actors,
            num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor or None, **remote)
        embedded.write_parquet(out)
        rows = sum(pq.ParquetFile(path).metadata.num_rows for path in Path(out).glob("*.parquet")) if local_out else -1
    finally:
        ray.shutdown()
    return rows, settings
