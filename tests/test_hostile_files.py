"""Hostile local inputs (issue 21, items 6, 7, 8, 11, 15): forged certificates, a changed corpus or model under a
resumed job, install racing remove, inputs that made tracebacks, and Parquet ids JSONL would refuse."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gguf import GGUFReader

from granite_gguf.bindings import corpus_job
from granite_gguf.bindings.corpus_job import CorpusReader, run_job
from granite_gguf.certificate import (
    generate_key,
    load_private_key,
    metadata_sha256,
    new_certificate,
    tensor_data_sha256,
    write_certificate,
)
from granite_gguf.errors import UserError
from granite_gguf.gguf_file.header import read_header
from granite_gguf.modelfiles import store
from granite_gguf.modelfiles.store import install, list_models, manifest_entries, manifest_file_path, remove
from granite_gguf.release import certified_files
from tests.helpers import Workspace, certificate_of, run_cli
from tests.test_hostile_check import F32, with_keys

IDENTITY, PROBES = "sha256:" + "ab" * 32, "cd" * 32


def certify(path: Path, key: Path | None) -> None:
    header = read_header(path)
    certificate = new_certificate(
        label="q8_0", reference="tiny-gemma3", checkpoint=IDENTITY, probe_set="gate", probe_sha256=PROBES,
        probe_texts=400, token_limit=32768, texts_cut=0, token_mismatches=0, cosine_min=0.9990, cosine_mean=0.9997,
        threshold=0.998, result="PASS", tensor_sha256=tensor_data_sha256(header), metadata_sha256=metadata_sha256(header))
    write_certificate(path, certificate, load_private_key(key) if key else None)


def forge(path: Path) -> None:
    """What a forger without the key does: change a weight, then rewrite the certificate with the new hashes."""
    header = read_header(path)
    data = bytearray(path.read_bytes())
    data[header.data_start + 1000] ^= 0x40
    path.write_bytes(bytes(data))
    certificate = certificate_of(path)
    header = read_header(path)
    write_certificate(path, replace(certificate, tensor_sha256=tensor_data_sha256(header)))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "releaser.key"
    return private, generate_key(private)


def test_a_signed_certificate_verifies_and_a_forged_one_does_not(workspace: Workspace, tmp_path: Path,
                                                                 keys: tuple[Path, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Item 6: edit the tensors, recompute the sha256, rewrite the certificate: `check` printed `certificate PASS`."""
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    signed = Path(shutil.copy(workspace.gguf("tiny-gemma3", "q8_0"), tmp_path / "signed.gguf"))
    certify(signed, private)
    assert run_cli("check", str(signed), "--public-key", str(public)) == 0
    assert "certificate PASS (signed by the given key" in capsys.readouterr().out

    forged = Path(shutil.copy(signed, tmp_path / "forged.gguf"))
    forge(forged)
    assert run_cli("check", str(forged)) == 0  # the hashes match: without a key nothing is proved, and it says so
    assert "unsigned: the hashes match, which proves nothing against a forger" in capsys.readouterr().out
    assert run_cli("check", str(forged), "--public-key", str(public)) == 1
    assert "certificate is unsigned; the given public key proves nothing about it" in capsys.readouterr().out

    other_private = tmp_path / "other.key"
    other_public = generate_key(other_private)
    assert run_cli("check", str(signed), "--public-key", str(other_public)) == 1
    assert "not signed by the given public key" in capsys.readouterr().out

    retuned = with_keys(signed, tmp_path / "retuned.gguf", {"modern-bert.attention.layer_norm_epsilon": (F32, 1e-3)})
    assert run_cli("check", str(retuned), "--public-key", str(public)) == 1
    assert "keys or tensor infos changed since it was certified" in capsys.readouterr().out
    assert run_cli("check", str(workspace.gguf("tiny-gemma3", "q8_0")), "--public-key", str(public)) == 1
    assert "no certificate" in capsys.readouterr().out


def test_release_trusts_only_certificates_signed_by_its_own_key(workspace: Workspace, tmp_path: Path,
                                                                keys: tuple[Path, Path]) -> None:
    """Item 6: a rerun of `release` installed the forged file as "verified before"."""
    private, _ = keys
    outdir = tmp_path / "out"
    outdir.mkdir()
    signed = Path(shutil.copy(workspace.gguf("tiny-gemma3", "q8_0"), outdir / "signed.gguf"))
    unsigned = Path(shutil.copy(signed, outdir / "unsigned.gguf"))
    certify(signed, private)
    certify(unsigned, None)
    forged = Path(shutil.copy(signed, outdir / "forged.gguf"))
    forge(forged)
    reused = {f.path.name: f.reused for f in certified_files(outdir, IDENTITY, PROBES, load_private_key(private))}
    assert reused == {"signed.gguf": True, "unsigned.gguf": False, "forged.gguf": False}
    assert not any(f.reused for f in certified_files(outdir, IDENTITY, PROBES, None)), "no key: every file verified again"


def test_keys_are_not_overwritten_and_bad_key_files_are_one_line(tmp_path: Path, keys: tuple[Path, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    private, public = keys
    assert run_cli("keygen", str(private)) == 2 and "already exists" in capsys.readouterr().err
    (tmp_path / "junk.pub").write_text("not a key")
    assert run_cli("check", str(private), "--public-key", str(tmp_path / "junk.pub")) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_install_racing_remove_leaves_every_manifest_whole(workspace: Workspace, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 8: `ollama install` racing `ollama remove` on one store: the new manifest named blobs the remove deleted.
    The race is made certain here: the install pauses after its blobs are in place, before its manifest."""
    gguf = workspace.gguf("tiny-gemma3", "q8_0")
    install(gguf, "a", tmp_path)
    real_put = store._put_file

    def slow_put(*args: Any) -> dict[str, Any]:
        layer = real_put(*args)
        time.sleep(0.5)
        return layer

    monkeypatch.setattr(store, "_put_file", slow_put)
    installer = threading.Thread(target=install, args=(gguf, "b", tmp_path))
    installer.start()
    time.sleep(0.2)  # the install of b holds its blobs, its manifest not yet written
    remove("a", tmp_path)
    installer.join(timeout=30)
    assert [m.name for m in list_models(tmp_path)] == ["b:latest"]
    for entry in manifest_entries(manifest_file_path(tmp_path, store.ModelName.parse("b"))):
        assert (tmp_path / "blobs" / store.blob_file_name(entry["digest"])).is_file(), entry["mediaType"]


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_hostile_checkpoints_are_one_error_line(workspace: Workspace, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Item 11: deep JSON in config.json or a safetensors header, a 5000-digit integer, a symlink loop of safetensors
    files, an output where nothing can be written: tracebacks before."""
    def checkpoint(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(workspace.checkpoint("tiny-gpt2"), folder)
        return folder

    cases: dict[str, tuple[Path, str]] = {}
    folder = checkpoint("deep-config")
    (folder / "config.json").write_text('{"a": ' + deep(200_000) + "}")
    cases["deep config"] = (folder, "JSON nested too deeply")
    folder = checkpoint("digits")
    (folder / "config.json").write_text('{"hidden_size": ' + "9" * 5000 + "}")
    cases["5000 digits"] = (folder, "not valid JSON")
    folder = checkpoint("deep-header")
    header = ('{"a": ' + deep(200_000) + "}").encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    cases["deep safetensors header"] = (folder, "JSON nested too deeply")
    folder = checkpoint("loop")
    (folder / "a.safetensors").symlink_to(folder / "b.safetensors")
    (folder / "b.safetensors").symlink_to(folder / "a.safetensors")
    cases["symlink loop"] = (folder, "Too many levels of symbolic links")
    for name, (source, message) in cases.items():
        assert run_cli("convert", str(source), "-o", str(tmp_path / f"{name}.gguf")) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (name, err)
    assert run_cli("convert", str(workspace.checkpoint("tiny-gpt2")), "-o", "/proc/x.gguf", "--no-progress") == 2
    assert capsys.readouterr().err.startswith("error: /proc/x.gguf: cannot write")
    assert run_cli("ollama", "install", str(workspace.gguf("tiny-gpt2", "f16")), "--name", "x",
                   "--models-dir", "/proc/granite-store") == 2
    assert capsys.readouterr().err.startswith("error: /proc/granite-store")


@pytest.mark.parametrize(("ids", "message"), [
    (pa.array([1.5, 2.5]), "column 'id' is double; ids must be integers or strings"),
    (pa.array([[1], [2]]), "ids must be integers or strings"),
    (pa.array([7, 7]), "row 1: id 7 appears more than once"),
    (pa.array(["x", "x"]), "row 1: id 'x' appears more than once"),
])
def test_parquet_ids_are_refused_as_jsonl_ids_are(tmp_path: Path, ids: pa.Array, message: str) -> None:
    """Item 15: float or list ids, and duplicate ids, were accepted silently from Parquet."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "id": ids}), path)
    with pytest.raises(UserError, match=message):
        CorpusReader(path, "text", "id", 10)


def test_duplicate_jsonl_ids_and_digest_collisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Duplicates are found through 64-bit keys; equal keys of different ids (forced here) are not duplicates."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": "t"}) + "\n" for i in range(5)))
    monkeypatch.setattr(corpus_job, "_id_key", lambda identifier: 1)
    assert CorpusReader(path, "text", "id", 10).rows == 5
    path.write_text(path.read_text() + json.dumps({"id": "d3", "text": "t"}) + "\n")
    with pytest.raises(UserError, match="row 5: id 'd3' appears more than once"):
        CorpusReader(path, "text", "id", 10)


def test_deep_jsonl_text_is_one_error(tmp_path: Path) -> None:
    """Item 11: a 100k-deep JSONL row was a RecursionError traceback."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": ' + deep(100_000) + "}\n")
    with pytest.raises(UserError, match="line 2: JSON nested too deeply"):
        CorpusReader(path, "text", "id", 10)


@pytest.mark.slow
def test_resume_notices_a_changed_input_or_model_and_a_broken_record(workspace: Workspace, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Item 7: resume checked only the input's path and size: shuffled lines doubled and lost ids; another model of the
    same size mixed two models' rows. Item 11: a garbage or directory `_job.json`, and `--out` in /proc, were tracebacks."""
    gguf = workspace.gguf("tiny-gemma3", "q8_0")
    corpus = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": f"text {i:03d}"}) + "\n" for i in range(30)]
    corpus.write_text("".join(lines))
    out = tmp_path / "out"
    run_job(corpus, gguf, out, batch_rows=10, progress=False)
    (out / "part-000002.parquet").unlink()  # as a kill would leave it
    corpus.write_text("".join(reversed(lines)))  # same size, other order
    with pytest.raises(UserError, match="different input_sha256"):
        run_job(corpus, gguf, out, batch_rows=10, progress=False)
    corpus.write_text("".join(lines))
    other = Path(shutil.copy(gguf, tmp_path / "other.gguf"))
    reader = GGUFReader(other, "r+")
    tensor = next(t for t in reader.tensors if t.name == "output_norm.weight")
    tensor.data[:] = np.float32(2.0)
    reader.data.flush()
    del reader
    model = tmp_path / "model.gguf"
    shutil.copyfile(gguf, model)
    run_job(corpus, model, tmp_path / "out2", batch_rows=10, progress=False)
    shutil.copyfile(other, model)  # same name, same size, other weights
    with pytest.raises(UserError, match="different model_sha256"):
        run_job(corpus, model, tmp_path / "out2", batch_rows=10, progress=False)
    assert run_job(corpus, gguf, out, batch_rows=10, progress=False).embedded == 10  # the same inputs resume

    for record in ("garbage", "folder"):
        broken = tmp_path / f"broken-{record}"
        broken.mkdir()
        if record == "garbage":
            (broken / "_job.json").write_bytes(b"\x00\xff{")
        else:
            (broken / "_job.json").mkdir()
        assert run_cli("embed-corpus", str(corpus), "--model", str(gguf), "--out", str(broken), "--no-progress") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "_job.json" in err and err.count("\n") == 1, err
    assert run_cli("embed-corpus", str(corpus), "--model", str(gguf), "--out", "/proc/granite-out", "--no-progress") == 2
    assert capsys.readouterr().err.startswith("error: /proc/granite-out")
