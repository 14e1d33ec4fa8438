"""`granite-gguf release` on a fixture: the set, Modelfiles, store entries and a pushed copy that pull brings
back byte-identical; a file planted to fail is neither installed nor pushed; a second run redoes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from granite_gguf import cli
from granite_gguf import release as release_module
from granite_gguf.certificate import generate_key
from granite_gguf.convert.quantize import QuantizedFile
from granite_gguf.convert.source import Checkpoint, open_checkpoint
from granite_gguf.convert.types import OutType
from granite_gguf.convert.writer import convert
from granite_gguf.modelfiles.modelfile import load_modelfile
from granite_gguf.modelfiles.registry import pull
from granite_gguf.modelfiles.store import (
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    ModelName,
    list_models,
    manifest_entries,
    manifest_file_path,
)
from granite_gguf.probes import gate_texts
from tests.helpers import Workspace, certificate_of
from tests.mutations import mutated_copy
from tests.test_registry import server  # noqa: F401  (the registry this module pushes to)

pytestmark = [pytest.mark.slow, pytest.mark.registry]
FAMILY = "tiny-gemma3"
QUANT = "f16,q8_0+emb_q4_k"


def release_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["release", *args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def stored_blob(store: Path, name: str) -> Path:
    manifest = manifest_file_path(store, ModelName.parse(name))
    digest = next(e["digest"] for e in manifest_entries(manifest) if e["mediaType"] == MODEL_MEDIA_TYPE)
    return store / "blobs" / digest.replace(":", "-")


def test_release_installs_pushes_and_resumes(workspace: Workspace, server: tuple[str, Path], tmp_path: Path,  # noqa: F811
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    source, outdir, store = workspace.checkpoint(FAMILY), tmp_path / "out", tmp_path / "store"
    public = generate_key(tmp_path / "releaser.key")
    args = [str(source), "--outdir", str(outdir), "--quant", QUANT, "--name", "test/tiny",
            "--push", f"{server[0]}/test/released", "--insecure", "--models-dir", str(store),
            "--signing-key", str(tmp_path / "releaser.key")]
    code, out, err = release_cli(capsys, *args)
    assert code == 0, err
    files = {path.name: path for path in outdir.glob("*.gguf")}
    assert set(files) == {f"{FAMILY}-f16.gguf", f"{FAMILY}-q8_0-emb_q4_k-mostly-q8_0-emb_q5_0.gguf"}
    for path in files.values():
        assert cli.main(["check", str(path), "--public-key", str(public)]) == 0
        certificate = certificate_of(path)
        assert certificate.result == "PASS" and certificate.probe_set == "gate"
        assert certificate.probe_texts == len(gate_texts()) and certificate.reference == str(source)
        assert load_modelfile(path.with_suffix(".Modelfile")).values("FROM") == [f"./{path.name}"]
    assert sorted(m.name for m in list_models(store)) == ["test/tiny:f16", "test/tiny:q8_0-emb_q4_k"]
    assert f"probe set: gate ({len(gate_texts())} texts" in out
    assert "installed test/tiny:q8_0-emb_q4_k, pushed" in out and "F16 100%" in out
    pulled = tmp_path / "pulled"
    pull(f"{server[0]}/test/released:q8_0-emb_q4_k", pulled, insecure=True)
    recipe = files[f"{FAMILY}-q8_0-emb_q4_k-mostly-q8_0-emb_q5_0.gguf"]
    assert stored_blob(pulled, f"{server[0]}/test/released:q8_0-emb_q4_k").read_bytes() == recipe.read_bytes()

    stamps = {path: path.stat().st_mtime_ns for path in [*outdir.iterdir(), *store.rglob("manifests/**/*")] if path.is_file()}
    monkeypatch.setattr(release_module, "run_reference", lambda *a, **k: pytest.fail("the reference ran again"))
    monkeypatch.setattr(release_module, "convert_set", lambda *a, **k: pytest.fail("the set was converted again"))
    code, out, err = release_cli(capsys, *args)  # signed by this key: proved verified, not verified again
    assert code == 0, err
    assert out.count("(verified before)") == 2
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps, "a second run rewrote nothing"


def test_a_file_that_fails_is_neither_installed_nor_pushed(workspace: Workspace, server: tuple[str, Path],  # noqa: F811
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    source, outdir, store = workspace.checkpoint(FAMILY), tmp_path / "out", tmp_path / "store"
    real_convert_set = release_module.convert_set

    def plant_bug(ckpt: Checkpoint, folder: Path, outputs: list[OutType], **kwargs: Any) -> list[QuantizedFile]:
        """The real set, with the f32 file replaced by one converted from a checkpoint with the wrong RoPE base."""
        files = real_convert_set(ckpt, folder, outputs, **kwargs)
        bad = mutated_copy(source, "wrong global RoPE base", tmp_path / "mutated")
        planted = next(f for f in files if f.output.label == "f32")
        convert(open_checkpoint(str(bad)), planted.path, OutType.F32)
        return files

    monkeypatch.setattr(release_module, "convert_set", plant_bug)
    code, out, err = release_cli(capsys, str(source), "--outdir", str(outdir), "--quant", "f32,q8_0", "--name", "test/planted",
                                 "--push", f"{server[0]}/test/planted", "--insecure", "--models-dir", str(store))
    assert code == 1
    assert f"refused: {FAMILY}-f32.gguf failed verification; not installed or pushed" in err
    assert "FAIL: not installed" in out
    assert [m.name for m in list_models(store)] == ["test/planted:q8_0"]
    registry, accept = f"http://{server[0]}/v2/test/planted/manifests", {"Accept": MANIFEST_MEDIA_TYPE}
    assert requests.head(f"{registry}/f32", headers=accept, timeout=10).status_code == 404
    assert requests.head(f"{registry}/q8_0", headers=accept, timeout=10).status_code == 200
    assert certificate_of(outdir / f"{FAMILY}-f32.gguf").result == "FAIL"
    assert not (outdir / f"{FAMILY}-f32.Modelfile").exists()


def test_bad_names_are_refused_before_any_work(workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = release_cli(capsys, str(workspace.checkpoint(FAMILY)), "--outdir", str(tmp_path / "o"), "--name", "bad name")
    assert code == 2 and err.startswith("error: invalid model name") and not (tmp_path / "o").exists()
