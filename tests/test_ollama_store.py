"""The ollama model store: layout, manifest and config per docs/architecture.md ("ollama"), digests, name safety, idempotence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from granite_gguf.errors import UserError
from granite_gguf.modelfiles import store
from granite_gguf.modelfiles.modelfile import generate_modelfile
from granite_gguf.modelfiles.store import LOCK_FILE, ModelName, install, list_models, remove
from tests.helpers import Workspace, run_cli, tree

MEDIA = "application/vnd.ollama.image."


@pytest.fixture(scope="module")
def gguf(workspace: Workspace) -> Path:
    return workspace.gguf("tiny-gemma3", "f16")


def blob(root: Path, digest: str) -> bytes:
    return (root / "blobs" / digest.replace(":", "-")).read_bytes()


def validated_manifest(root: Path, manifest_path: str) -> dict[str, Any]:
    """Check the structure §7 describes and every digest and size; return the manifest."""
    manifest = json.loads((root / "manifests" / manifest_path).read_bytes())
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    for entry in [manifest["config"], *manifest["layers"]]:
        assert list(entry) == ["mediaType", "digest", "size"]
        data = blob(root, entry["digest"])
        assert entry["digest"] == f"sha256:{hashlib.sha256(data).hexdigest()}" and entry["size"] == len(data)
    for path in (root / "blobs").iterdir():
        assert path.name == f"sha256-{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return manifest


def test_install_from_gguf(gguf: Path, tmp_path: Path) -> None:
    model = install(gguf, "granite-embedding:f16", tmp_path)
    manifest = validated_manifest(tmp_path, "registry.ollama.ai/library/granite-embedding/f16")
    layers = {layer["mediaType"].removeprefix(MEDIA): layer for layer in manifest["layers"]}
    assert list(layers) == ["model", "license", "params"]
    assert blob(tmp_path, layers["model"]["digest"]) == gguf.read_bytes()
    assert blob(tmp_path, layers["license"]["digest"]) == b"apache-2.0"
    assert json.loads(blob(tmp_path, layers["params"]["digest"])) == {"num_batch": 32768, "num_ctx": 32768}
    config = json.loads(blob(tmp_path, manifest["config"]["digest"]))
    assert config == {
        "model_format": "gguf", "model_family": "modern-bert", "model_families": ["modern-bert"],
        "model_type": "353K", "file_type": "F16",  # ollama 0.5.4's `ollama show` of this file: "parameters 353K"
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in manifest["layers"]]},
    }
    assert list(config) == ["model_format", "model_family", "model_families", "model_type", "file_type",
                            "architecture", "os", "rootfs"]
    assert model.name == "granite-embedding:f16" and model.size == sum(
        entry["size"] for entry in [manifest["config"], *manifest["layers"]])
    assert not [p for p in tmp_path.rglob(".*") if p.name != LOCK_FILE], "no temporary files are left"


def test_gguf_and_its_generated_modelfile_install_the_same_model(gguf: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "elsewhere" / "Modelfile"
    modelfile.parent.mkdir()
    modelfile.write_text(generate_modelfile(gguf, modelfile))
    install(gguf, "a", tmp_path / "one")
    install(modelfile, "a", tmp_path / "two")
    assert tree(tmp_path / "one") == tree(tmp_path / "two")


def test_install_from_hand_written_modelfile(gguf: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f'FROM {gguf}\nPARAMETER num_ctx 512\nPARAMETER temperature 0.5\nPARAMETER stop "<a&b>"\n'
                         "PARAMETER stop x\nSYSTEM be brief\n")
    install(modelfile, "me/tiny:v1", tmp_path / "models")
    manifest = validated_manifest(tmp_path / "models", "registry.ollama.ai/me/tiny/v1")
    layers = {layer["mediaType"].removeprefix(MEDIA): layer["digest"] for layer in manifest["layers"]}
    assert list(layers) == ["model", "system", "params"]
    params = blob(tmp_path / "models", layers["params"])
    assert params == b'{"num_ctx":512,"stop":["\\u003ca\\u0026b\\u003e","x"],"temperature":0.5}\n'  # as Go writes it


# ollama's format.HumanNumber (format/format.go): whole numbers bare, else K rounded, M two decimals, B one.
@pytest.mark.parametrize("count, label", [(0, "0"), (999, "999"), (1000, "1K"), (353_500, "354K"), (354_500, "354K"),
                                          (970_499, "970K"), (999_999, "1000K"), (1_000_000, "1M"), (1_234_567, "1.23M"),
                                          (149_015_000, "149.01M"), (311_000_000, "311M"), (999_999_999, "1000.00M"),
                                          (2_000_000_000, "2B"), (1_550_000_000, "1.6B"), (1_450_000_000, "1.4B")])
def test_parameter_size_label_is_ollamas(count: int, label: str) -> None:
    assert store.parameter_size(count) == label


@pytest.mark.parametrize("text, words", [
    ("PARAMETER num_ctx 8\n", "no FROM line"),
    ("FROM ./missing.gguf\n", "not a GGUF file"),
    ("FROM {gguf}\nPARAMETER num_ctx 8 # eight\n", "'#' starts a comment only"),
    ("FROM {gguf}\nADAPTER ./lora.gguf\n", "ADAPTER is not supported"),
])
def test_bad_modelfile_writes_nothing(gguf: Path, tmp_path: Path, text: str, words: str) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(text.format(gguf=gguf))
    models = tmp_path / "models"
    with pytest.raises(UserError, match=words):
        install(modelfile, "x", models)
    assert not models.exists()


@pytest.mark.parametrize("name", ["../../etc/x", "/abs", "a/b/c/d/e", "..", "ns/../m", "a\\b", "m:", ":t", "ns/",
                                  "host/ns/m:../x", "m:t/x", "-m", "m" * 81, "m:.t", "m@sha256:00", ""])
def test_names_that_could_escape_the_store_are_refused(gguf: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="invalid model name"):
        install(gguf, name, tmp_path)
    with pytest.raises(UserError, match="invalid model name"):
        remove(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, parts", [
    ("m", ("registry.ollama.ai", "library", "m", "latest")),
    ("m:t", ("registry.ollama.ai", "library", "m", "t")),
    ("ns/m.v2:t_1", ("registry.ollama.ai", "ns", "m.v2", "t_1")),
    ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest")),
    ("h.example/ns/m:t", ("h.example", "ns", "m", "t")),
    # ollama's types/model/name_test.go TestParseNameParts: the scheme is not part of the name.
    ("scheme://host:port/namespace/model:tag", ("host:port", "namespace", "model", "tag")),
    ("http://127.0.0.1:5000/ns/m", ("127.0.0.1:5000", "ns", "m", "latest")),
])
def test_name_defaults(name: str, parts: tuple[str, ...]) -> None:
    parsed = ModelName.parse(name)
    assert parsed.parts == parts
    assert ModelName.parse(str(parsed)) == parsed


@pytest.mark.parametrize("name, scheme", [("scheme://host:port/namespace/model:tag", "scheme"),
                                          ("http://h/ns/m", "http"), ("h/ns/m", "https")])
def test_the_scheme_is_kept_apart(name: str, scheme: str) -> None:
    parsed = ModelName.parse(name)
    assert parsed.scheme == scheme and "://" not in str(parsed)


def test_reinstall_is_idempotent(gguf: Path, tmp_path: Path) -> None:
    install(gguf, "m", tmp_path)
    before = tree(tmp_path)
    model_blob = next(p for p in (tmp_path / "blobs").iterdir() if p.stat().st_size == gguf.stat().st_size)
    stamp = model_blob.stat().st_mtime_ns, model_blob.stat().st_ino
    install(gguf, "m", tmp_path)
    assert tree(tmp_path) == before
    assert (model_blob.stat().st_mtime_ns, model_blob.stat().st_ino) == stamp, "a good blob is not rewritten"
    model_blob.write_bytes(b"damaged")
    install(gguf, "m", tmp_path)
    assert tree(tmp_path) == before, "a blob whose content does not match its name is replaced"


def test_large_files_are_copied_in_chunks(gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_CHUNK", 4096)
    install(gguf, "m", tmp_path)
    validated_manifest(tmp_path, "registry.ollama.ai/library/m/latest")


def test_list_and_remove_keep_shared_blobs(gguf: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {gguf}\nPARAMETER num_ctx 128\n")
    models = tmp_path / "models"
    install(gguf, "granite", models)
    install(modelfile, "me/short:128", models)
    assert [m.name for m in list_models(models)] == ["granite:latest", "me/short:128"]
    shared = blob(models, json.loads((models / "manifests/registry.ollama.ai/me/short/128").read_bytes())["layers"][0]["digest"])
    remove("me/short:128", models)
    assert [m.name for m in list_models(models)] == ["granite:latest"]
    assert not (models / "manifests/registry.ollama.ai/me").exists()
    validated_manifest(models, "registry.ollama.ai/library/granite/latest")
    assert shared == gguf.read_bytes()
    assert len(list((models / "blobs").iterdir())) == 4  # model, license, params, config of the one left
    remove("granite", models)
    assert list_models(models) == [] and list((models / "blobs").iterdir()) == []
    with pytest.raises(UserError, match="not found"):
        remove("granite", models)


def test_default_models_dir_is_ollama_models(gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    install(gguf, "m", None)
    assert [m.name for m in list_models(None)] == ["m:latest"]
    assert (tmp_path / "manifests/registry.ollama.ai/library/m/latest").is_file()


def test_cli_install_list_remove(gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = str(tmp_path)
    assert run_cli("ollama", "install", str(gguf), "--name", "granite:f16", "--models-dir", models) == 0
    assert capsys.readouterr().out.startswith("installed granite:f16 (")
    assert run_cli("ollama", "list", "--models-dir", models) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"] and listing[1].startswith("granite:f16 ")
    assert run_cli("ollama", "remove", "granite:f16", "--models-dir", models) == 0
    assert list_models(tmp_path) == []


@pytest.mark.parametrize("argv", [["install", "{gguf}", "--name", "../../etc/x"], ["remove", "/abs"],
                                  ["install", "{gguf}", "--name", "a/b/c/d/e"], ["remove", "never-installed"]])
def test_cli_errors_are_one_line(gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    args = [arg.format(gguf=gguf) for arg in argv]
    assert run_cli("ollama", *args, "--models-dir", str(tmp_path / "models")) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    assert not (tmp_path / "models").exists()
