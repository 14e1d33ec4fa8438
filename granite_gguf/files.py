"""Atomic outputs (write beside the destination under a temporary name, then rename into place), and
the cache folder."""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from granite_gguf.errors import UserError

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}  # the user's to fix


def open_regular(path: Path) -> io.BufferedReader:
    """`path` opened for reading, if it is a regular file; anything else (a FIFO, a device, a folder) is a
    UserError. Opened with O_NONBLOCK, so a FIFO is opened at once instead of waiting for a writer forever,
    and judged by the descriptor's own fstat, so no other file can be swapped in after the test."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a device or socket"
        raise UserError(f"{path}: not a regular file ({kind})")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def sha256_of_file(path: Path) -> str:
    """`sha256:<hex>` of a file's content: a blob's name in the ollama store, a corpus job's fingerprints."""
    with open_regular(path) as f:
        return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def parse_json(data: str | bytes, what: str) -> Any:
    """JSON from outside, or a one-line UserError naming `what`: besides malformed text, Python's parser
    raises RecursionError on deeply nested arrays and ValueError on integers of more than 4,300 digits."""
    try:
        return json.loads(data)
    except RecursionError:
        raise UserError(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the integer digit limit
        raise UserError(f"{what}: not valid JSON ({exc})") from None


def cache_dir() -> Path:
    """The project's cache folder (downloads, remembered checks), as scripts/install.sh has it."""
    return Path(os.environ.get("GRANITE_GGUF_CACHE") or Path.home() / ".cache" / "granite-gguf")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; fsync it and rename it into place only if the block succeeds.

    A crash or SIGKILL at any point leaves either the previous file or the complete new one under
    `path`. The temporary `.name.PID.tmp` is locked while it is written, so the stray one a SIGKILL
    leaves is recognised and removed by the next write of `path`.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such directory")
    remove_stale_temporaries(path.parent, f".{glob.escape(path.name)}.*.tmp")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # a folder one cannot create files in (/proc, read-only, another's) is the user's to fix
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o666))
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with held(tmp):
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in WRITE_ERRNOS:
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def held(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created empty if missing) for the block: the mark of a
    temporary file in use. The kernel drops the lock when the process dies, however it dies."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def remove_stale_temporaries(folder: Path, pattern: str) -> None:
    """Delete the files in `folder` matching the glob `pattern` that no process holds (see `held`):
    temporaries whose writer was killed."""
    for stale in folder.glob(pattern):
        try:
            descriptor = os.open(stale, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile, or not ours to read
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stale.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # a live writer holds it
        finally:
            os.close(descriptor)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Create `path`'s folder, write it through `fill`, then fsync and rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, tmp.open("wb") as out:
        fill(out)
