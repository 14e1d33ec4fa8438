"""The layering docs/architecture.md describes, read from the sources: command code stays in the command modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("granite_gguf", "convert", "bindings", "modelfiles")  # the package-dir mapping in pyproject.toml
COMMAND_MODULES = {"granite_gguf/cli.py", "granite_gguf/cli_options.py", "bindings/cli.py", "modelfiles/cli.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_command_modules_import_argparse() -> None:
    sources = [path for folder in PACKAGE_FOLDERS for path in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 40
    importing = {path.relative_to(ROOT).as_posix() for path in sources if "argparse" in imported_modules(path)}
    assert importing <= COMMAND_MODULES, f"command code outside the cli modules: {sorted(importing - COMMAND_MODULES)}"
