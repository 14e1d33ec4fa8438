"""The Modelfile differential: every Modelfile the project writes or ships, ollama's parser_test.go cases and this
project's edge cases (tests/modelfile_cases.py) go through the real ollama's `ollama create` and through
`granite-gguf modelfile --check` and `ollama install`; they must agree on accept/refuse and on every stored byte.

The real ollama here is 0.5.4; granite-gguf follows ollama fb30760 where the two read a file differently. Those cases
name their difference (modelfile_cases.DIFFERENCES, listed in docs/ollama.md): the test checks that 0.5.4 still
behaves as recorded and that granite-gguf behaves as fb30760 does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from granite_gguf.errors import UserError
from granite_gguf.modelfiles.granite_r2 import shipped_modelfiles
from granite_gguf.modelfiles.modelfile import check_modelfile, generate_modelfile, read_modelfile
from granite_gguf.modelfiles.store import ModelName, install, manifest_file_path
from tests.helpers import FAMILIES, Workspace
from tests.modelfile_cases import CASES, DIFFERENCES, Case
from tests.services import Ollama, ollama_server

pytestmark = [pytest.mark.slow, pytest.mark.ollama]

UNSUPPORTED = ("is not supported by granite-gguf ollama install", "stores one GGUF")  # deliberate: install refuses


@pytest.fixture(scope="module")
def ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ollama]:
    with ollama_server(tmp_path_factory.mktemp("ollama")) as server:
        yield server


def project_cases() -> list[Case]:
    """The Modelfiles the project writes (generated for each fixture) and ships; FROM is resolved per case."""
    generated = [Case(f"generated-{family}-{file_type}", f"@generated {family} {file_type}")
                 for family in FAMILIES for file_type in ("f16", "q8_0")]
    return generated + [Case(f"shipped-{name}", text) for name, text in shipped_modelfiles().items()]


ALL_CASES = project_cases() + CASES


@dataclass
class Stored:
    """What a store holds for one model: text layers by media type in order, the parsed params, the config blob."""

    manifest: dict[str, Any]
    blobs: dict[str, bytes]


def stored(models: Path, name: str) -> Stored:
    manifest = json.loads(manifest_file_path(models, ModelName.parse(name)).read_bytes())
    for layer in manifest["layers"]:
        layer.pop("from", None)  # 0.5.4's create records its own blob path there (tests/test_ollama.py)
    blobs = {entry["digest"]: (models / "blobs" / entry["digest"].replace(":", "-")).read_bytes()
             for entry in [manifest["config"], *manifest["layers"]]}
    return Stored(manifest, blobs)


def write_case(case: Case, folder: Path, workspace: Workspace) -> Path:
    folder.mkdir()
    path = folder / "Modelfile"
    if isinstance(case.text, str) and case.text.startswith("@generated "):
        _, family, file_type = case.text.split()
        gguf = Path(shutil.copy(workspace.gguf(family, file_type), folder / "model.gguf"))
        path.write_text(generate_modelfile(gguf, path))
        return path
    gguf_name = "model.gguf"
    if case.name.startswith("shipped-"):
        gguf_name = case.name.removeprefix("shipped-").removesuffix(".Modelfile") + ".gguf"
    shutil.copy(workspace.gguf("tiny-gemma3", "q8_0" if "q8_0" in case.name else "f16"), folder / gguf_name)
    data = case.text if isinstance(case.text, bytes) else case.text.encode()
    path.write_bytes(data.replace("{m}".encode("utf-16-le"), "./model.gguf".encode("utf-16-le"))
                     .replace("{m}".encode("utf-16-be"), "./model.gguf".encode("utf-16-be"))
                     .replace(b"{m}", b"./model.gguf"))
    return path


@dataclass
class Outcome:
    ollama: Stored | str  # what ollama stored, or its error
    check_refuses: bool
    install: Stored | str  # what granite-gguf installed, or its error


def outcome(case: Case, ollama: Ollama, workspace: Workspace, tmp_path: Path) -> Outcome:
    path = write_case(case, tmp_path / "case", workspace)
    ollama.clear()
    result = ollama.run("create", "case:t", "-f", str(path))
    theirs: Stored | str = stored(ollama.models, "case:t") if result.returncode == 0 else result.stderr.strip()[-300:]
    problems = check_modelfile(read_modelfile(path))
    try:
        install(path, "case:t", tmp_path / "ours")
        ours: Stored | str = stored(tmp_path / "ours", "case:t")
    except UserError as exc:
        ours = str(exc)
    return Outcome(theirs, any(problem.fatal for problem in problems), ours)


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.name for case in ALL_CASES])
def test_granite_gguf_reads_the_modelfile_as_ollama_does(case: Case, ollama: Ollama, workspace: Workspace,
                                                          tmp_path: Path) -> None:
    result = outcome(case, ollama, workspace, tmp_path)
    accepted = isinstance(result.ollama, Stored)
    if case.difference:
        assert case.difference in DIFFERENCES
        assert accepted == case.accepts_054, f"ollama 0.5.4 no longer behaves as recorded: {result.ollama}"
        assert not result.check_refuses, check_modelfile(read_modelfile(tmp_path / "case/Modelfile"))  # fb30760 takes each
        if accepted and isinstance(result.install, Stored):
            assert result.install != result.ollama, "0.5.4 now stores what fb30760 does: drop the recorded difference"
        return
    assert result.check_refuses == (not accepted), (result.ollama, check_modelfile(read_modelfile(tmp_path / "case/Modelfile")))
    if not accepted:
        assert isinstance(result.install, str), f"granite-gguf installs a Modelfile ollama refuses: {result.ollama}"
        return
    if isinstance(result.install, str) and any(words in result.install for words in UNSUPPORTED):
        return  # deliberate: ADAPTER, MESSAGE, the newer instructions and a second FROM are not installed
    assert isinstance(result.install, Stored), f"ollama accepts, granite-gguf install refuses: {result.install}"
    theirs = result.ollama
    assert isinstance(theirs, Stored)
    assert result.install.manifest == theirs.manifest
    assert result.install.blobs == theirs.blobs
