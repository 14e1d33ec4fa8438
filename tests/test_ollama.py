"""A real ollama (0.5.4-ipexllm, scripts/install-ollama.sh) reads what the project writes: `ollama create` of every
Modelfile it generates or ships, `ollama show`, the same store as `granite-gguf ollama install`, and `ollama pull` /
`ollama push` against scripts/start-registry.sh. docs/ollama.md says what this covers and what it does not.

ollama 0.5.4 and current ollama (fb30760) differ in two bytes of bookkeeping that these tests pin down:
- 0.5.4's create records the model layer's blob path in the manifest (`"from": "<OLLAMA_MODELS>/blobs/sha256-…"`);
  fb30760 records the GGUF's file name. granite-gguf writes no `from`; every blob, the config included, is equal.
- 0.5.4's pull re-encodes the manifest (json.Marshal: no trailing newline); fb30760 stores the bytes it fetched.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from granite_gguf.modelfiles.granite_r2 import shipped_modelfiles
from granite_gguf.modelfiles.modelfile import generate_modelfile
from granite_gguf.modelfiles.registry import pull, push
from granite_gguf.modelfiles.store import ModelName, install, manifest_file_path
from tests.helpers import FAMILIES, Workspace, tree
from tests.services import Ollama, ollama_server, start_registry

pytestmark = [pytest.mark.slow, pytest.mark.ollama]

NO_LOCATION = "http: no Location header in response"  # Go's http.ErrNoLocation, which ollama's pull prints


@pytest.fixture(scope="module")
def ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ollama]:
    with ollama_server(tmp_path_factory.mktemp("ollama")) as server:
        yield server


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    yield from start_registry(tmp_path_factory)


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    yield from start_registry(tmp_path_factory, "--no-redirect")


def stored(models: Path, name: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A model's manifest (parsed) and the bytes of every blob it names, config included."""
    manifest = json.loads(manifest_file_path(models, ModelName.parse(name)).read_bytes())
    blobs = {entry["digest"]: (models / "blobs" / entry["digest"].replace(":", "-")).read_bytes()
             for entry in [manifest["config"], *manifest["layers"]]}
    return manifest, blobs


def without_from(manifest: dict[str, Any], models: Path) -> dict[str, Any]:
    """ollama 0.5.4's manifest less the `from` its create writes on the model layer (its own blob path)."""
    layers = []
    for layer in manifest["layers"]:
        layer = dict(layer)
        source = layer.pop("from", None)
        if source is not None:
            assert layer["mediaType"] == "application/vnd.ollama.image.model"
            assert source == str(models / "blobs" / layer["digest"].replace(":", "-"))
        layers.append(layer)
    return {**manifest, "layers": layers}


def modelfile_cases(workspace: Workspace, root: Path) -> dict[str, Path]:
    """Every Modelfile the project writes: generated for each fixture (f16, q8_0) and the shipped ones, each beside a
    GGUF under the name its FROM gives (a tiny fixture stands in for the real model)."""
    cases = {}
    for family in FAMILIES:
        for file_type in ("f16", "q8_0"):
            folder = root / f"{family}-{file_type}"
            folder.mkdir()
            gguf = shutil.copy(workspace.gguf(family, file_type), folder / "model.gguf")
            path = folder / "Modelfile"
            path.write_text(generate_modelfile(Path(gguf), path))
            cases[f"generated-{family}-{file_type}"] = path
    for name, text in shipped_modelfiles().items():
        folder = root / name.removesuffix(".Modelfile")
        folder.mkdir()
        file_type = name.removesuffix(".Modelfile").rsplit("-", 1)[1]
        shutil.copy(workspace.gguf("tiny-gemma3", file_type), folder / f"{folder.name}.gguf")
        (folder / "Modelfile").write_text(text)
        cases[f"shipped-{name}"] = folder / "Modelfile"
    return cases


@pytest.fixture(scope="module")
def cases(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return modelfile_cases(workspace, tmp_path_factory.mktemp("modelfiles"))


CASE_NAMES = [f"generated-{family}-{file_type}" for family in FAMILIES for file_type in ("f16", "q8_0")] + [
    f"shipped-{name}" for name in shipped_modelfiles()]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_ollama_create_stores_what_granite_gguf_install_stores(ollama: Ollama, cases: dict[str, Path], case: str,
                                                             tmp_path: Path) -> None:
    modelfile = cases[case]
    ollama.clear()
    ollama.ok("create", "m:t", "-f", str(modelfile))
    theirs, their_blobs = stored(ollama.models, "m:t")
    install(modelfile, "m:t", tmp_path)
    ours, our_blobs = stored(tmp_path, "m:t")
    assert without_from(theirs, ollama.models) == ours
    assert their_blobs == our_blobs  # the GGUF, license, params and the config blob, byte for byte
    assert (tmp_path / "manifests/registry.ollama.ai/library/m/t").read_bytes() == (
        json.dumps(without_from(theirs, ollama.models), separators=(",", ":")) + "\n").encode()


def test_ollama_create_of_a_gguf_install_equals_its_generated_modelfile(ollama: Ollama, workspace: Workspace,
                                                                      tmp_path: Path) -> None:
    """`granite-gguf ollama install x.gguf` (no Modelfile) stores what `ollama create` makes of the generated one."""
    gguf = workspace.gguf("tiny-gpt2", "q8_0")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(generate_modelfile(gguf, modelfile))
    ollama.clear()
    ollama.ok("create", "g", "-f", str(modelfile))
    install(gguf, "g", tmp_path / "ours")
    theirs, their_blobs = stored(ollama.models, "g")
    assert (without_from(theirs, ollama.models), their_blobs) == stored(tmp_path / "ours", "g")


@pytest.mark.parametrize("case", ["generated-tiny-gemma3-f16", "generated-tiny-gpt2-q8_0",
                                  "shipped-granite-embedding-english-r2-q8_0.Modelfile"])
def test_ollama_show(ollama: Ollama, cases: dict[str, Path], case: str) -> None:
    modelfile = cases[case]
    context = {"tiny-gemma3": 32768, "tiny-gpt2": 8192, "granite-embedding-english-r2": 8192}[
        next(key for key in ("tiny-gemma3", "tiny-gpt2", "granite-embedding-english-r2") if key in case)]
    ollama.clear()
    ollama.ok("create", "shown", "-f", str(modelfile))
    text = ollama.ok("show", "shown")
    assert "architecture        modern-bert" in text, text
    assert ("quantization        Q8_0" if "q8_0" in case else "quantization        F16") in text, text
    assert ollama.ok("show", "shown", "--license").strip() == "apache-2.0"
    parameters = sorted(line.split() for line in ollama.ok("show", "shown", "--parameters").splitlines() if line.strip())
    assert parameters == [["num_batch", str(context)], ["num_ctx", str(context)]]
    info: Any = ollama.api("/api/show", {"model": "shown"})["model_info"]
    assert info["general.architecture"] == "modern-bert" and info["modern-bert.pooling_type"] == 2  # CLS


@pytest.fixture(scope="module")
def pushed(workspace: Workspace, registry: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the tiny q8_0 model installed by granite-gguf and pushed to the registry as test/tiny:q8_0."""
    root = tmp_path_factory.mktemp("store-a")
    install(workspace.gguf("tiny-gemma3", "q8_0"), "tiny:q8_0", root)
    push("tiny:q8_0", f"{registry[0]}/test/tiny:q8_0", root, insecure=True)
    return root


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_ollama_pull_from_the_registry_into_an_empty_store(ollama: Ollama, registry: tuple[str, Path], pushed: Path,
                                                          host: str) -> None:
    """Into an empty store, because ollama skips the blobs it already has. localhost:PORT works too because the
    registry's blob server is on 127.0.0.2 (scripts/start-registry.sh says why that matters)."""
    port = registry[0].rsplit(":", 1)[1]
    ollama.clear()
    ollama.ok("pull", "--insecure", f"{host}:{port}/test/tiny:q8_0")
    theirs, their_blobs = stored(ollama.models, f"{host}:{port}/test/tiny:q8_0")
    ours, our_blobs = stored(pushed, "tiny:q8_0")
    assert their_blobs == our_blobs
    assert theirs == ours
    pulled = manifest_file_path(ollama.models, ModelName.parse(f"{host}:{port}/test/tiny:q8_0")).read_bytes()
    assert pulled + b"\n" == manifest_file_path(pushed, ModelName.parse("tiny:q8_0")).read_bytes()  # 0.5.4 re-encodes
    assert set(tree(ollama.models)) == {f"manifests/{host}:{port}/test/tiny/q8_0",
                                        *(f"blobs/{digest.replace(':', '-')}" for digest in our_blobs)}


def test_ollama_push_then_granite_gguf_pull(ollama: Ollama, registry: tuple[str, Path], cases: dict[str, Path],
                                            tmp_path: Path) -> None:
    ollama.clear()
    ollama.ok("create", "made-by-ollama:v1", "-f", str(cases["generated-tiny-o200k-q8_0"]))
    target = f"{registry[0]}/test/from-ollama:v1"
    ollama.ok("cp", "made-by-ollama:v1", target)
    ollama.ok("push", "--insecure", target)
    pull(target, tmp_path, insecure=True)
    theirs, their_blobs = stored(ollama.models, target)
    ours, our_blobs = stored(tmp_path, target)
    assert our_blobs == their_blobs and ours == theirs  # 0.5.4's push sends its `from` along; pull keeps it
    manifest = manifest_file_path(tmp_path, ModelName.parse(target))
    # 0.5.4's push sends json.Marshal of its manifest (no trailing newline); pull stores the bytes it gets
    assert manifest.read_bytes() + b"\n" == manifest_file_path(ollama.models, ModelName.parse(target)).read_bytes()
    assert set(tree(tmp_path)) == {str(manifest.relative_to(tmp_path)),
                                   *(f"blobs/{digest.replace(':', '-')}" for digest in our_blobs)}


def test_ollama_pull_fails_on_the_plain_registry(ollama: Ollama, plain_registry: tuple[str, Path], pushed: Path) -> None:
    """A registry that answers blob GETs with 200 and no Location: ollama's own error, and nothing stored."""
    push("tiny:q8_0", f"{plain_registry[0]}/test/tiny:q8_0", pushed, insecure=True)
    ollama.clear()
    assert ollama.error("pull", "--insecure", f"{plain_registry[0]}/test/tiny:q8_0") == NO_LOCATION
    assert not (ollama.models / "manifests").exists() or not any((ollama.models / "manifests").rglob("*/*/*/*"))
