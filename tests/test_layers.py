"""The layering docs/architecture.md describes, read from the sources: command code stays in the command modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("granite_gguf", "convert", "bindings", "modelfiles")  # the package-dir mapping in pyproject.toml
COMMAND_MODULES = {"granite_gguf/cli.py", "granite_gguf/cli_options.py", "bindings/cli.py", "modelfiles/cli.py"}


SOURCES = sorted(path.relative_to(ROOT).as_posix() for folder in PACKAGE_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def imported_modules(source: str) -> set[str]:
    """Every module `source` imports, at its top or inside a function, by its full dotted name."""
    tree = ast.parse((ROOT / source).read_text(encoding="utf-8"), source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def importers(module: str) -> set[str]:
    return {source for source in SOURCES
            if any(name == module or name.startswith(module + ".") for name in imported_modules(source))}


def test_only_the_command_modules_import_argparse() -> None:
    assert len(SOURCES) > 40
    outside = importers("argparse") - COMMAND_MODULES
    assert not outside, f"command code outside the cli modules: {sorted(outside)}"


def test_only_the_development_commands_use_the_dev_package() -> None:
    """fixture and demo build fixtures; nothing in the converter, the runtime or the ollama packaging does."""
    assert {source for source in importers("granite_gguf.dev") if not source.startswith("granite_gguf/dev/")} == {"granite_gguf/cli.py"}
