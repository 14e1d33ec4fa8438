"""Remembered checks: a pass is reused only for the very same version of a file, and a cache that is
damaged, foreign or unwritable costs a re-check, never a wrong answer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, Keys

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.cli import main
from granite_gguf.convert.quantize import quantize_file
from granite_gguf.convert.source import open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.gguf_file import remembered
from granite_gguf.gguf_file.contract import check_gguf
from granite_gguf.gguf_file.header import GGUFCheckError, Header, OmittedArray, without_large_arrays
from granite_gguf.gguf_file.remembered import checked_header, entry_path
from tests.helpers import Workspace
from tests.test_check import duplicate_token


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("GRANITE_GGUF_CACHE", str(folder))
    return folder


@pytest.fixture
def gguf(workspace: Workspace, tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    shutil.copyfile(workspace.gguf("tiny-gemma3", "f16"), path)
    return path


def count_checks(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths `check_gguf` is called on from now on (it still runs)."""
    calls: list[Path] = []

    def counted(path: Path) -> Header:
        calls.append(Path(os.path.realpath(path)))  # the file, also when checked through its descriptor
        return check_gguf(path)

    monkeypatch.setattr(remembered, "check_gguf", counted)
    return calls


def test_a_pass_is_remembered_and_gives_the_same_header(cache: Path, gguf: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    checks = count_checks(monkeypatch)
    first = checked_header(gguf)
    assert entry_path(gguf).is_file() and entry_path(gguf).is_relative_to(cache)
    second = checked_header(gguf)
    assert checks == [gguf]  # the second came from the entry
    assert second == first == without_large_arrays(check_gguf(gguf))
    full = check_gguf(gguf)
    tokens = second.metadata[Keys.Tokenizer.LIST]
    assert isinstance(tokens, OmittedArray) and len(tokens) == len(full.metadata[Keys.Tokenizer.LIST]) > 1000
    assert second.tensors == full.tensors and second.data_start == full.data_start
    with Embedder(gguf) as remembered:
        vector = remembered.encode("the same file, checked once")
    assert checks == [gguf]
    with Embedder(gguf, unsafe_skip_check=True) as unchecked:
        assert np.array_equal(unchecked.encode("the same file, checked once"), vector)


def test_a_file_changed_in_place_is_checked_again(cache: Path, gguf: Path) -> None:
    """Same size, same mtime put back: ctime still moves, so the planted duplicate token is found."""
    checked_header(gguf)
    before = os.stat(gguf)
    reader = GGUFReader(gguf, "r+")
    duplicate_token(reader)
    reader.data.flush()
    del reader
    os.utime(gguf, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(gguf)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(GGUFCheckError, match="appears more than once"):
        checked_header(gguf)
    with pytest.raises(GGUFCheckError, match="appears more than once"):
        Embedder(gguf)


def test_another_copy_or_other_rules_are_checked_again(cache: Path, gguf: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    checked_header(gguf)
    checks = count_checks(monkeypatch)
    moved = tmp_path / "moved.gguf"
    gguf.rename(moved)
    checked_header(moved)  # another path
    shutil.copyfile(moved, gguf)
    checked_header(gguf)  # the old path, another inode
    assert checks == [moved, gguf]
    monkeypatch.setattr(remembered, "_rules_digest", lambda: "the checker changed")
    checked_header(gguf)
    assert checks == [moved, gguf, gguf]


def test_damaged_or_foreign_entries_are_ignored(cache: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checked_header(gguf)
    entry = entry_path(gguf)
    good = json.loads(entry.read_text())
    checks = count_checks(monkeypatch)
    entry.write_text(entry.read_text()[:-10])  # cut short
    assert checked_header(gguf) == checked_header(gguf)
    assert len(checks) == 1 and json.loads(entry.read_text()) == good  # rewritten
    foreign = dict(good, identity=dict(good["identity"], inode=good["identity"]["inode"] + 1))
    entry.write_text(json.dumps(foreign))
    checked_header(gguf)
    assert len(checks) == 2
    entry.write_text(json.dumps(dict(good, header={"version": 3})))  # its identity, an unusable header
    checked_header(gguf)
    assert len(checks) == 3


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("GRANITE_GGUF_CACHE", str(blocker))
    checks = count_checks(monkeypatch)
    assert checked_header(gguf) == checked_header(gguf)
    assert len(checks) == 2


def test_only_the_newest_entries_are_kept(cache: Path, gguf: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remembered, "MAX_REMEMBERED", 2)
    copies = [tmp_path / f"copy{i}.gguf" for i in range(3)]
    for index, copy in enumerate(copies):
        shutil.copyfile(gguf, copy)
        checked_header(copy)
        os.utime(entry_path(copy), ns=(index, index))  # distinct ages whatever the clock's resolution
    assert sorted(cache.joinpath("checked").glob("*.json")) == sorted(entry_path(c) for c in copies[1:])


def test_the_check_command_checks_and_remembers(cache: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checked_header(gguf)
    checks = count_checks(monkeypatch)
    assert main(["check", str(gguf)]) == 0  # always checks
    assert main(["embed", str(gguf), "x"]) == 0  # then trusts that pass
    assert checks == [gguf]


def test_files_this_tool_writes_are_checked_once_as_written(cache: Path, workspace: Workspace, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    written = convert(open_checkpoint(str(workspace.checkpoint("tiny-gemma3"))), tmp_path / "f16.gguf",
                      OutType.parse("f16"))
    checks = count_checks(monkeypatch)
    with Embedder(written):
        pass
    quantized = quantize_file(written, tmp_path / "q8_0.gguf", OutType.Q8_0).path
    with Embedder(quantized):
        pass
    assert checks == [quantized]  # the quantizer's output, checked as it was written; its source was remembered
