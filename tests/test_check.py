"""The GGUF validator: damaged copies of a good file are refused with a reason, before llama.cpp sees them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.cli import main
from granite_gguf.convert.quantize import quantize_file
from granite_gguf.convert.types import OutType
from granite_gguf.gguf_file.contract import check_gguf
from granite_gguf.gguf_file.header import GGUFCheckError
from tests.helpers import Workspace


def damaged_copy(workspace: Workspace, tmp_path: Path, edit: Callable[[GGUFReader], None]) -> Path:
    """A copy of the f16 Gemma-style fixture edited in place through gguf-py's writable reader."""
    path = tmp_path / "damaged.gguf"
    shutil.copyfile(workspace.gguf("tiny-gemma3", "f16"), path)
    reader = GGUFReader(path, "r+")
    edit(reader)
    reader.data.flush()
    del reader
    return path


def duplicate_token(reader: GGUFReader) -> None:
    field = reader.fields["tokenizer.ggml.tokens"]
    texts = [bytes(field.parts[i]) for i in field.data]
    same_length = [i for i, t in enumerate(texts) if len(t) == len(texts[1000]) and i != 1000]
    field.parts[field.data[same_length[0]]][:] = np.frombuffer(texts[1000], dtype=np.uint8)


def offset_past_end(reader: GGUFReader) -> None:
    tensor = reader.tensors[-1]
    tensor.field.parts[-1][0] += 1 << 30  # the offset part of the last tensor info


def wrong_shape(reader: GGUFReader) -> None:
    tensor = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    dims = tensor.field.parts[3]  # [name length, name, n_dims, dims, type, offset]
    dims[0], dims[1] = dims[1], dims[0]  # same size, transposed


def special_id_out_of_range(reader: GGUFReader) -> None:
    reader.fields["tokenizer.ggml.cls_token_id"].parts[-1][0] = 10**6


def token_type_length(reader: GGUFReader) -> None:
    reader.fields["tokenizer.ggml.token_type"].parts[4][0] -= 1  # [key length, key, type, item type, count, …]


def token_type_item_type(reader: GGUFReader) -> None:
    reader.fields["tokenizer.ggml.token_type"].parts[3][0] = 4  # INT32 → UINT32: llama.cpp refuses to load


DAMAGE = {
    "duplicate token text": (duplicate_token, "appears more than once"),
    "tensor offset past the end": (offset_past_end, "past the end of the file"),
    "wrong tensor shape": (wrong_shape, "blk.1.ffn_up.weight has shape"),
    "special id out of range": (special_id_out_of_range, "cls_token_id = 1000000 is outside the vocabulary"),
    "array count off by one": (token_type_length, "string of 9[0-9]+ bytes \\(limit 1024\\)"),  # parse desynchronized
    "token_type of the wrong type": (token_type_item_type, "token_type holds UINT32"),
}


def test_good_files_pass(workspace: Workspace) -> None:
    for outtype in ("f32", "f16", "q8_0"):
        checked = check_gguf(workspace.gguf("tiny-o200k", outtype))
        assert len(checked.tensors) == 26


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_file_is_refused_by_the_bindings(workspace: Workspace, tmp_path: Path, damage: str) -> None:
    edit, message = DAMAGE[damage]
    path = damaged_copy(workspace, tmp_path, edit)
    with pytest.raises(GGUFCheckError, match=message):
        Embedder(path)
    with pytest.raises(GGUFCheckError, match=message):
        quantize_file(path, tmp_path / "out.gguf", OutType.Q8_0)
    assert not (tmp_path / "out.gguf").exists()
    assert main(["check", str(path)]) == 1
    assert main(["embed", str(path), "x"]) == 2


def test_truncated_and_foreign_files(workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = workspace.gguf("tiny-gpt2", "f16").read_bytes()
    cases = {
        "empty": (b"", "bad magic"),
        "magic only": (b"GGUF", "version"),
        "version 9": (b"GGUF" + (9).to_bytes(4, "little") + bytes(16), "version 9"),
        "header cut": (good[:2000], "does not fit the file"),
        "key cut": (good[:40], "left in the file"),
        "data cut": (good[:-100], "past the end of the file"),
        "huge key count": (b"GGUF" + (3).to_bytes(4, "little") + bytes(8) + (1 << 40).to_bytes(8, "little"), "limits"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(GGUFCheckError, match=message):
            check_gguf(path)
    assert main(["check", str(tmp_path / "empty.gguf"), str(workspace.gguf("tiny-gpt2", "f16"))]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("INVALID") and out[1].startswith("ok")


@pytest.mark.slow
def test_without_the_check_llama_cpp_aborts_the_process(workspace: Workspace, tmp_path: Path) -> None:
    """Why the check exists: the same duplicate-token file kills a process that skips it."""
    path = damaged_copy(workspace, tmp_path, duplicate_token)
    script = f"from granite_gguf.bindings.embedder import Embedder; Embedder({str(path)!r}, unsafe_skip_check=True)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode < 0 or result.returncode == 134, result.stderr[-500:]
