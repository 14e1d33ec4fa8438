"""mypy over the granite_gguf package, then over scripts/ and tests/ (`make lint`, `make test`).

Its subpackages live in top-level folders mapped by pyproject's [tool.setuptools.package-dir], a
mapping mypy cannot read, and the editable install's import hook is invisible to it; so a tree of
links in build/typecheck lays the package out as Python imports it, and mypy checks that tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def link_tree() -> None:
    """build/typecheck/<package path> → the folder setuptools finds each listed package in: its own package-dir
    entry, or its nearest mapped parent's folder and the rest of its name (subpackages inside their parent)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    for package in sorted(setuptools["packages"]):  # parents first
        parts = package.split(".")
        mapped = next(n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in mapping)
        folder = ROOT / mapping[".".join(parts[:mapped])] / Path(*parts[mapped:])
        target = TREE.joinpath(*parts)
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(folder.glob("*.py")):
            (target / source.name).symlink_to(os.path.relpath(source, target))


def main() -> int:
    """The package, then the scripts and tests against it (mypy takes a package or files per run)."""
    link_tree()
    env = {**os.environ, "MYPYPATH": str(TREE)}
    mypy = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *sys.argv[1:]]
    status = subprocess.run([*mypy, "-p", "granite_gguf"], cwd=ROOT, env=env).returncode
    return status or subprocess.run([*mypy, "scripts", "tests"], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
