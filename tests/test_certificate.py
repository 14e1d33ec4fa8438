"""The certificate travels in the file: written atomically, read back by inspect, checked by check."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from granite_gguf.bindings.embedder import Embedder
from granite_gguf.certificate import (
    Certificate,
    check_certificate,
    metadata_sha256,
    new_certificate,
    read_certificate,
    tensor_data_sha256,
    write_certificate,
)
from granite_gguf.convert.keys import CERTIFICATE_PREFIX
from granite_gguf.gguf_file.contract import check_gguf
from granite_gguf.gguf_file.header import read_header
from tests.helpers import Workspace, certificate_of, run_cli_process

pytestmark = pytest.mark.slow  # builds a fixture and runs it through llama.cpp


def certificate_for(path: Path, **changes: object) -> Certificate:
    values = dict(label="q8_0", reference="tiny-gemma3", checkpoint="sha256:" + "ab" * 32, probe_set="gate",
                  probe_sha256="cd" * 32, probe_texts=400, token_limit=32768, texts_cut=0, token_mismatches=0,
                  cosine_min=0.9986508123, cosine_mean=0.999714, threshold=0.998, result="PASS",
                  tensor_sha256=tensor_data_sha256(read_header(path)), metadata_sha256=metadata_sha256(read_header(path)))
    values.update(changes)
    return new_certificate(**values)


@pytest.fixture
def certified(workspace: Workspace, tmp_path: Path) -> tuple[Path, Path]:
    """(the original q8_0 file, a copy with a certificate written into it)."""
    original = workspace.gguf("tiny-gemma3", "q8_0")
    copy = Path(shutil.copy(original, tmp_path / "certified.gguf"))
    write_certificate(copy, certificate_for(copy))
    return original, copy


def data_section(path: Path) -> bytes:
    header = read_header(path)
    return path.read_bytes()[header.data_start:]


def test_written_without_changing_anything_else(certified: tuple[Path, Path]) -> None:
    original, copy = certified
    before, after = check_gguf(original), check_gguf(copy)
    assert {k: v for k, v in after.metadata.items() if not k.startswith(CERTIFICATE_PREFIX)} == before.metadata
    assert [(t.name, t.dims, t.ggml_type, t.offset) for t in after.tensors] == \
        [(t.name, t.dims, t.ggml_type, t.offset) for t in before.tensors]
    assert data_section(copy) == data_section(original)
    certificate = certificate_of(copy)
    assert certificate == certificate_for(original)
    assert certificate.cosine_min == 0.9986508123  # FLOAT64, not rounded to float32
    assert check_certificate(read_header(copy), certificate, None).ok
    with Embedder(original) as a, Embedder(copy) as b:  # llama.cpp loads it and computes the same
        assert np.array_equal(a.encode(["Die Katze sitzt auf der Matte."]), b.encode(["Die Katze sitzt auf der Matte."]))
    assert not list(copy.parent.glob(".*.tmp"))


def test_a_second_certificate_replaces_the_first(certified: tuple[Path, Path]) -> None:
    _, copy = certified
    second = replace(certificate_of(copy), result="FAIL", cosine_min=0.5)
    write_certificate(copy, second)
    header = read_header(copy)
    assert read_certificate(header) == second
    assert sum(key.startswith(CERTIFICATE_PREFIX) for key in header.metadata) == len(second.as_dict())


def test_inspect_shows_it_and_check_flags_changed_tensor_bytes(certified: tuple[Path, Path]) -> None:
    original, copy = certified
    shown = run_cli_process("inspect", str(copy))
    assert shown.returncode == 0, shown.stderr
    assert "certificate   PASS: q8_0 against tiny-gemma3" in shown.stdout
    assert "cosine min 0.9986508, mean 0.9997140, threshold 0.998" in shown.stdout
    assert "certificate   none" in run_cli_process("inspect", str(original)).stdout
    assert run_cli_process("inspect", str(copy), "--json").stdout.count('"tensor_sha256"') == 1
    ok = run_cli_process("check", str(copy))
    assert ok.returncode == 0 and "certificate PASS (unsigned: the hashes match, which proves nothing" in ok.stdout
    header = read_header(copy)
    data = bytearray(copy.read_bytes())
    data[header.data_start + 1000] ^= 0x01  # one bit of one weight
    copy.write_bytes(bytes(data))
    flagged = run_cli_process("check", str(copy))
    assert flagged.returncode == 1
    assert f"INVALID {copy}: tensor data changed since it was certified" in flagged.stdout
