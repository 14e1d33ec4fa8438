"""Reading a GGUF file, apart from writing one; `load` is the one way in, for the converter and the runtime alike.

    header.py      the bounded parser: keys, values, tensor infos, each length checked against the bytes left
    contract.py    what llama.cpp needs of a model file besides, per architecture unit (docs/security.md)
    remembered.py  passes of the check remembered per version of a file and of the checker
    summary.py     what a header says, for people (`inspect`) and programs (Modelfiles, the ollama store)
    rewrite.py     the keys of a file rewritten atomically (certificates; tests that plant hostile values)

`load` opens the file once, checks it through that descriptor (or recalls the pass), and returns a frozen
`GGUFFile`: the header, its summary and the identity of the version that was read. `GGUFFile.opened` then
gives llama.cpp `/proc/self/fd/N` of a descriptor proven to be that very version.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from granite_gguf.errors import UserError
from granite_gguf.files import open_regular
from granite_gguf.gguf_file.header import GGUFCheckError, Header, OmittedArray, TensorInfo, read_header, without_large_arrays
from granite_gguf.gguf_file.remembered import FileIdentity, checked_header
from granite_gguf.gguf_file.summary import GGUFSummary, summarize

__all__ = ["GGUFCheckError", "GGUFFile", "GGUFSummary", "Header", "OmittedArray", "TensorInfo", "load"]

FD_FOLDER = "/proc/self/fd"  # Linux: each open descriptor by number, opening the same file


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF as `load` read it: `header` (without the vocabulary-sized arrays, `OmittedArray`, unless loaded
    `whole`), its `summary`, whether it was `checked`, and the `identity` of the version that was read."""

    path: Path  # as named
    header: Header
    summary: GGUFSummary
    checked: bool
    identity: FileIdentity

    @contextmanager
    def opened(self) -> Iterator[str]:
        """A name of this very file for llama.cpp, for the block: `/proc/self/fd/N` of a descriptor opened now and
        proven to be the version that was read (`identity`), so what llama.cpp loads is what was checked even if
        another file is renamed over `path` meanwhile. GGUFCheckError if `path` names another file, or this one
        changed, since it was loaded (load it again)."""
        with _opened(self.path) as (handle, alias):
            if FileIdentity.of(os.fstat(handle.fileno())) != self.identity:
                raise GGUFCheckError(f"{self.path}: changed since it was read; load it again")
            yield str(alias)


def load(path: str | os.PathLike[str], *, check: bool = True, whole: bool = False) -> GGUFFile:
    """The GGUF at `path`, read through one descriptor: checked (the architecture's contract, docs/security.md)
    unless a pass is remembered for this very version of it, or only parsed (still bounded) if not `check`.
    `whole` keeps every array (rewriting keys, hashing a certificate's metadata) and, with `check`, always checks
    afresh. A pass is remembered for the next load. GGUFCheckError says what is wrong."""
    path = Path(path)
    with _opened(path) as (handle, alias):
        identity = FileIdentity.of(os.fstat(handle.fileno()))
        try:
            if check:
                header = checked_header(alias, whole=whole)
            else:
                header = read_header(alias)
                header = header if whole else without_large_arrays(header)
        except GGUFCheckError as exc:  # named as the caller named it, not by its descriptor
            raise GGUFCheckError(str(exc).replace(f"{alias}: ", f"{path}: ", 1)) from None
    header = replace(header, path=path)
    return GGUFFile(path, header, summarize(header), check, identity)


@contextmanager
def _opened(path: Path) -> Iterator[tuple[io.BufferedReader, Path]]:
    """`path` opened if it is a regular file, and a name of the open descriptor (`/proc/self/fd/N`; `path` itself
    where there is no such folder)."""
    try:
        handle = open_regular(path)
    except UserError as exc:  # not there, not readable, not a regular file: the message names it
        raise GGUFCheckError(str(exc)) from None
    with handle:
        yield handle, Path(f"{FD_FOLDER}/{handle.fileno()}") if os.path.isdir(FD_FOLDER) else path
