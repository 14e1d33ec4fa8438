"""The import rules of docs/architecture.md ("Floors"), read off the product modules' import statements (fast tier):
the runtime apart from the converter, one module on llama-cpp-python, GGUFs read through one entry point,
command code in the command modules, development code out of the product."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
READERS = {"read_header", "check_gguf", "checked_header"}  # gguf_file's own ways in, behind `load`
COMMAND_MODULES = {"granite_gguf.cli", "granite_gguf.cli_options", "granite_gguf.bindings.cli", "granite_gguf.modelfiles.cli"}


def product_modules() -> dict[str, Path]:
    """Dotted name → file, for every module of every listed package: a package's folder is its own package-dir
    entry, or its nearest mapped parent's folder and the rest of its name (as setuptools finds it)."""
    mapping = SETUPTOOLS["package-dir"]
    modules = {}
    for package in SETUPTOOLS["packages"]:
        parts = package.split(".")
        mapped = next(n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in mapping)
        folder = ROOT / mapping[".".join(parts[:mapped])] / Path(*parts[mapped:])
        for source in sorted(folder.glob("*.py")):
            modules[package if source.stem == "__init__" else f"{package}.{source.stem}"] = source
    return modules


def imports(source: Path) -> list[tuple[str, str | None]]:
    """(module, name) for each import in `source`, at any depth (lazy imports inside functions count):
    `import a.b` gives ("a.b", None), `from a import b` gives ("a", "b") and ("a.b", None) (b may be a module)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{source}: relative import"  # the project imports absolutely
            module = node.module or ""
            for alias in node.names:
                found += [(module, alias.name), (f"{module}.{alias.name}", None)]
    return found


def importers(target: str) -> set[str]:
    """The product modules that import `target` or anything inside it."""
    return {name for name, source in product_modules().items()
            if any(module == target or module.startswith(target + ".") for module, _ in imports(source))}


def test_the_modules_are_found() -> None:
    modules = product_modules()
    assert {"granite_gguf.bindings.embedder", "granite_gguf.gguf_file", "granite_gguf.gguf_file.header",
            "granite_gguf.llama_backend", "granite_gguf.convert.writer", "granite_gguf.dev.fixtures",
            "granite_gguf.modelfiles.cli"} <= modules.keys()


def test_the_runtime_imports_nothing_from_the_converter() -> None:
    """bindings/ reads GGUFs through granite_gguf.gguf_file and runs them through granite_gguf.llama_backend."""
    assert {name for name in importers("granite_gguf.convert") if name.startswith("granite_gguf.bindings")} == set()


def test_only_the_backend_imports_llama_cpp() -> None:
    """A llama-cpp-python upgrade touches one module (tests and scripts may use it directly)."""
    assert importers("llama_cpp") == {"granite_gguf.llama_backend"}


def test_gguf_files_are_read_through_load() -> None:
    """Outside the file layer, no module calls its parser, check or remembered check directly."""
    offenders = [f"{name}: {module}.{imported}" for name, source in product_modules().items()
                 if not name.startswith("granite_gguf.gguf_file") for module, imported in imports(source)
                 if module.startswith("granite_gguf.gguf_file") and imported in READERS]
    assert offenders == []


def test_only_the_command_modules_import_argparse() -> None:
    outside = importers("argparse") - COMMAND_MODULES
    assert not outside, f"command code outside the cli modules: {sorted(outside)}"


def test_only_the_development_commands_use_the_dev_package() -> None:
    """fixture and demo build fixtures; nothing in the converter, the runtime or the ollama packaging does."""
    users = {name for name in importers("granite_gguf.dev") if not name.startswith("granite_gguf.dev")}
    assert users == {"granite_gguf.cli"}
