"""The import rules of docs/architecture.md ("Floors"), read off the product modules' import statements (fast tier)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
READERS = {"read_header", "check_gguf", "checked_header"}  # gguf_file's own ways in, behind `load`


def product_modules() -> dict[str, Path]:
    """Dotted name → file, for every module of the granite_gguf package (pyproject's package-dir mapping)."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for source in sorted((ROOT / folder).glob("*.py")):
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


def test_the_modules_are_found() -> None:
    modules = product_modules()
    assert {"granite_gguf.bindings.embedder", "granite_gguf.gguf_file", "granite_gguf.llama_backend",
            "granite_gguf.convert.writer"} <= modules.keys()


def test_the_runtime_imports_nothing_from_the_converter() -> None:
    """bindings/ reads GGUFs through granite_gguf.gguf_file and runs them through granite_gguf.llama_backend."""
    offenders = [f"{name}: {module}" for name, source in product_modules().items()
                 if name.startswith("granite_gguf.bindings") for module, _ in imports(source)
                 if module == "granite_gguf.convert" or module.startswith("granite_gguf.convert.")]
    assert offenders == []


def test_only_the_backend_imports_llama_cpp() -> None:
    """A llama-cpp-python upgrade touches one module (tests and scripts may use it directly)."""
    users = {name for name, source in product_modules().items()
             if any(module == "llama_cpp" or module.startswith("llama_cpp.") for module, _ in imports(source))}
    assert users == {"granite_gguf.llama_backend"}


def test_gguf_files_are_read_through_load() -> None:
    """Outside the file layer, no module calls its parser, check or remembered check directly."""
    offenders = [f"{name}: {module}.{imported}" for name, source in product_modules().items()
                 if not name.startswith("granite_gguf.gguf_file") for module, imported in imports(source)
                 if module.startswith("granite_gguf.gguf_file") and imported in READERS]
    assert offenders == []
