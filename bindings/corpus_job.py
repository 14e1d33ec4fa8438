"""`embed-corpus`: a whole corpus (JSONL, Parquet or plain text) to Parquet shards of vectors, resumable.

Rows are read `batch_rows` at a time, embedded, and written as shard `part-NNNNNN.parquet` (one row
group: id, vector as a fixed-size float32 list, token count, truncated flag) through a temporary file
that is renamed into place, so a shard on disk is always complete. Shard k holds input rows
[k·batch_rows, (k+1)·batch_rows): a restarted job skips the shards that exist and goes on from the
first missing one, so a job killed at any point and restarted writes each row exactly once. The
folder's `_job.json` records what the shards were made from; a restart with other settings is refused.
Memory is bounded by one batch whatever the corpus size.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from granite_gguf.bindings.defaults import DEFAULT_BATCH_ROWS
from granite_gguf.bindings.embedder import Embedder
from granite_gguf.errors import UserError
from granite_gguf.files import atomic_output, open_regular, parse_json, sha256_of_file

MANIFEST = "_job.json"
SHARD_GLOB = "part-*.parquet"
# Output columns, named once (the single-process job and the Ray job write the same schema).
ID, VECTOR, TOKENS, TRUNCATED = "id", "vector", "tokens", "truncated"


class InputFormat(Enum):
    JSONL = "jsonl"
    PARQUET = "parquet"
    TEXT = "text"

    @classmethod
    def of(cls, path: Path) -> InputFormat:
        suffix = path.suffix.lower()
        for fmt, suffixes in _SUFFIXES.items():
            if suffix in suffixes:
                return fmt
        known = ", ".join(s for suffixes in _SUFFIXES.values() for s in suffixes)
        raise UserError(f"{path}: unknown input type {suffix or '(no suffix)'!r}; expected one of {known}")


_SUFFIXES = {InputFormat.JSONL: (".jsonl", ".ndjson", ".json"), InputFormat.PARQUET: (".parquet", ".pq"),
             InputFormat.TEXT: (".txt", ".text")}


@dataclass(frozen=True)
class Batch:
    """Input rows [start, start + len(texts)): their ids and texts."""

    start: int
    ids: pa.Array
    texts: list[str]


def output_schema(dim: int, id_type: pa.DataType) -> pa.Schema:
    return pa.schema([(ID, id_type), (VECTOR, pa.list_(pa.float32(), dim)), (TOKENS, pa.int32()),
                      (TRUNCATED, pa.bool_())])


def embed_table(embedder: Embedder, ids: pa.Array, texts: list[str], dim: int | None) -> pa.Table:
    """One output table: the rows' ids, L2-normalized vectors (first `dim` values), token counts, truncation."""
    result = embedder.embed(texts, truncate_dim=dim)
    width = result.vectors.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(result.vectors).ravel(), pa.float32()),
                                                width)
    columns = [ids, vectors, pa.array(result.token_counts, pa.int32()), pa.array(result.truncated, pa.bool_())]
    return pa.Table.from_arrays(columns, schema=output_schema(width, ids.type))


def text_of(value: Any, row: int, field: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"row {row}: field {field!r} is {type(value).__name__ if value is not None else 'missing'}, "
                        "not a string")
    return value


class CorpusReader:
    """Streams an input file in batches of `batch_rows`, without holding more than one batch."""

    def __init__(self, path: Path, text_field: str, id_field: str, batch_rows: int) -> None:
        if not path.is_file():
            raise UserError(f"{path}: no such input file")
        if batch_rows < 1:
            raise UserError(f"--batch-rows must be positive, got {batch_rows}")
        self.path, self.text_field, self.id_field, self.batch_rows = path, text_field, id_field, batch_rows
        self.format = InputFormat.of(path)
        self.id_type: pa.DataType | None = None
        self.rows, self.id_type = self._survey()

    def _survey(self) -> tuple[int, pa.DataType | None]:
        """Row count (for the progress bar) and the id column's type (None: ids are row numbers).

        A JSONL file is read through once here, so a bad row is reported before any work is done."""
        if self.format is InputFormat.PARQUET:
            try:
                file = pq.ParquetFile(self.path)
            except (pa.ArrowException, OSError) as exc:
                raise UserError(f"{self.path}: not a readable Parquet file ({exc})") from None
            schema = file.schema_arrow
            if self.text_field not in schema.names:
                raise UserError(f"{self.path}: no column {self.text_field!r} (columns: {', '.join(schema.names)})")
            if not pa.types.is_string(schema.field(self.text_field).type) and \
                    not pa.types.is_large_string(schema.field(self.text_field).type):
                raise UserError(f"{self.path}: column {self.text_field!r} is {schema.field(self.text_field).type}, "
                                "not text")
            id_type = schema.field(self.id_field).type if self.id_field in schema.names else None
            if id_type is not None and not (pa.types.is_integer(id_type) or pa.types.is_string(id_type)
                                            or pa.types.is_large_string(id_type)):
                raise UserError(f"{self.path}: column {self.id_field!r} is {id_type}; ids must be integers or strings")
            self.id_type = id_type
            self._refuse_duplicate_ids()
            return file.metadata.num_rows, id_type
        with self.path.open("rb") as lines:
            first = next(lines, b"")
            rows = bool(first) + sum(1 for _ in lines)
        if self.format is InputFormat.TEXT or not first:
            return rows, None
        value = self._json_row(first, 0).get(self.id_field)
        if value is None:
            self.id_type = None
        elif isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"row 0: id {value!r} is neither an integer nor a string")
        else:
            self.id_type = pa.int64() if isinstance(value, int) else pa.string()
        self._refuse_duplicate_ids()  # reads every row: each line JSON, each text a string, each id of the first's type
        return rows, self.id_type

    def _refuse_duplicate_ids(self) -> None:
        """Every id once (a duplicate would make two output rows one key). One pass, 8 bytes per row (a 64-bit
        key per id, sorted); only ids whose keys repeat are then compared, in a second pass."""
        if self.id_type is None:
            for _ in self._rows():
                pass
            return
        keys = array("q", (_id_key(identifier) for _, identifier in self._rows()))
        ordered = np.sort(np.frombuffer(keys, dtype=np.int64)) if keys else np.zeros(0, np.int64)
        repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        if not repeated:
            return
        seen: set[Any] = set()
        for row, (_, identifier) in enumerate(self._rows()):
            if _id_key(identifier) in repeated:
                if identifier in seen:
                    raise UserError(f"{self.path}: row {row}: id {identifier!r} appears more than once")
                seen.add(identifier)

    def _json_row(self, line: bytes, row: int) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # parsed again for the one-line message: no f-string per good row
            value = parse_json(line, f"{self.path}: line {row + 1}")
        if not isinstance(value, dict):
            raise UserError(f"{self.path}: line {row + 1} is not a JSON object")
        return value

    def batches(self, skip: Collection[int] = ()) -> Iterator[Batch]:
        """Batches of exactly `batch_rows` rows (the last may be shorter), except those whose index is
        in `skip`: these are read past, not returned."""
        texts: list[str] = []
        ids: list[Any] = []
        for row, (text, identifier) in enumerate(self._rows()):
            texts.append(text)
            ids.append(identifier)
            if len(texts) == self.batch_rows:
                if (row // self.batch_rows) not in skip:
                    yield self._batch(row + 1 - len(texts), ids, texts)
                texts, ids = [], []
        if texts and (self.rows - 1) // self.batch_rows not in skip:
            yield self._batch(self.rows - len(texts), ids, texts)

    def _batch(self, start: int, ids: list[Any], texts: list[str]) -> Batch:
        if self.id_type is None:
            return Batch(start, pa.array(range(start, start + len(texts)), pa.int64()), texts)
        return Batch(start, pa.array(ids, self.id_type), texts)

    def _rows(self) -> Iterator[tuple[str, Any]]:
        """(text, id or None) per input row, in order."""
        if self.format is InputFormat.PARQUET:
            columns = [self.text_field] + ([self.id_field] if self.id_type is not None else [])
            row = 0
            for record in pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows, columns=columns):
                texts = record.column(self.text_field).to_pylist()
                ids = record.column(self.id_field).to_pylist() if self.id_type is not None else [None] * len(texts)
                for text, identifier in zip(texts, ids):
                    if self.id_type is not None and identifier is None:
                        raise UserError(f"{self.path}: row {row} has no {self.id_field!r}")
                    yield text_of(text, row, self.text_field), identifier
                    row += 1
            return
        with self.path.open("rb") as lines:
            for row, line in enumerate(lines):
                if self.format is InputFormat.TEXT:
                    yield line.decode("utf-8", "replace").rstrip("\r\n"), None
                    continue
                value = self._json_row(line, row)
                identifier = self._id(value, row) if self.id_type is not None else None
                yield text_of(value.get(self.text_field), row, self.text_field), identifier

    def _id(self, value: dict[str, Any], row: int) -> int | str:
        identifier = value.get(self.id_field)
        wanted = int if self.id_type == pa.int64() else str
        if isinstance(identifier, bool) or not isinstance(identifier, wanted):
            raise UserError(f"row {row}: id {identifier!r} is not {'an integer' if wanted is int else 'a string'} "
                            "like the first row's")
        return identifier


def _id_key(identifier: int | str) -> int:
    """An id as a signed 64-bit key: Python's own hash, stable within the process, the only place keys are
    compared (equal keys are then compared as the ids)."""
    return hash(identifier)


@dataclass(frozen=True)
class JobSpec:
    """What a folder of shards was made from: a restart must match it. The input and the model are named by
    their content (sha256), so a shuffled corpus or another model of the same size is noticed."""

    input: str
    input_bytes: int
    input_sha256: str
    model: str
    model_bytes: int
    model_sha256: str
    dim: int | None
    batch_rows: int
    max_tokens: int
    text_field: str
    id_field: str


@dataclass(frozen=True)
class JobSummary:
    rows: int  # input rows
    embedded: int  # rows embedded by this run
    resumed: int  # rows found done by an earlier run
    shards: int
    out: Path


def shard_path(out: Path, index: int) -> Path:
    return out / f"part-{index:06d}.parquet"


def _check_manifest(out: Path, spec: JobSpec) -> None:
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            with open_regular(manifest) as handle:
                earlier = parse_json(handle.read(), str(manifest))
        except OSError as exc:
            raise UserError(f"{manifest}: cannot read ({exc.strerror})") from None
        now = asdict(spec)
        if not isinstance(earlier, dict):
            raise UserError(f"{manifest}: not a job record; use a new --out folder or remove it")
        if earlier != now:
            changed = sorted(key for key in earlier.keys() | now.keys() if earlier.get(key) != now.get(key))
            raise UserError(f"{out} holds shards of another job (different {', '.join(changed)}); "
                            "use a new --out folder or remove it")
        return
    if any(out.glob(SHARD_GLOB)):
        raise UserError(f"{out} holds shards but no {MANIFEST}; use a new --out folder or remove them")
    with atomic_output(manifest) as tmp:
        tmp.write_text(json.dumps(asdict(spec), indent=2) + "\n")


def run_job(input_path: Path, model: Path, out: Path, *, text_field: str = "text", id_field: str = "id",
            dim: int | None = None, batch_rows: int = DEFAULT_BATCH_ROWS, max_tokens: int | None = None,
            threads: int | None = None, gpu_layers: int = 0, progress: bool = True) -> JobSummary:
    """Embed every row of `input_path` not yet in `out`; see the module's docstring."""
    from tqdm import tqdm

    reader = CorpusReader(input_path, text_field, id_field, batch_rows)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: not a directory")
    with Embedder(model, n_threads=threads, max_tokens=max_tokens, gpu_layers=gpu_layers) as embedder:
        embedder.checked_dim(dim)  # refuse a wrong --dim before any output
        out.mkdir(parents=True, exist_ok=True)
        spec = JobSpec(str(input_path.resolve()), input_path.stat().st_size, sha256_of_file(input_path),
                       str(model.resolve()), model.stat().st_size, sha256_of_file(model), dim, batch_rows,
                       embedder.max_tokens, text_field, id_field)
        _check_manifest(out, spec)
        shards = -(-reader.rows // batch_rows)
        done = {index for index in range(shards) if shard_path(out, index).exists()}
        resumed = sum(min(batch_rows, reader.rows - index * batch_rows) for index in done)
        embedded = 0
        with tqdm(total=reader.rows, initial=resumed, unit="row", disable=not progress, smoothing=0.1,
                  desc="embedding") as bar:
            for batch in reader.batches(skip=done):
                table = embed_table(embedder, batch.ids, batch.texts, dim)
                with atomic_output(shard_path(out, batch.start // batch_rows)) as tmp:
                    pq.write_table(table, tmp, row_group_size=len(batch.texts))
                embedded += len(batch.texts)
                bar.update(len(batch.texts))
    return JobSummary(reader.rows, embedded, resumed, shards, out)


def read_output(out: Path) -> pa.Table:
    """Every shard of a finished job, in input order."""
    paths = sorted(out.glob(SHARD_GLOB))
    if not paths:
        raise UserError(f"{out}: no {SHARD_GLOB} shards")
    return pa.concat_tables(pq.read_table(path) for path in paths)

