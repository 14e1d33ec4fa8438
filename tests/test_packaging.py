"""granite-gguf as a package: one version, loose pins, extras that match the imports, and a wheel that runs.

The slow test builds the sdist and the wheel with `python -m build`, installs the wheel into a fresh
virtual environment (not editable; llama-cpp-python from the cached build of scripts/install.sh), and
runs the command line from a folder outside the checkout, as a user who ran `pip install` would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import granite_gguf
from granite_gguf.errors import EXTRA_OF_MODULE
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXACTLY_PINNED = {"llama-cpp-python"}  # its low-level API is used directly (pyproject.toml says why)


def requirements_of(extra: str) -> list[Requirement]:
    """The requirements an extra brings, with `granite-gguf[other]` self-references expanded."""
    found = []
    for text in PROJECT["optional-dependencies"][extra]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "granite-gguf":
            for inner in requirement.extras:
                found += requirements_of(inner)
        else:
            found.append(requirement)
    return found


def all_requirements() -> list[Requirement]:
    found = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"]:
        found += requirements_of(extra)
    return found


def test_version_is_read_from_the_installed_metadata() -> None:
    assert granite_gguf.__version__ == PROJECT["version"]
    assert PROJECT["version"] not in (ROOT / "granite_gguf" / "__init__.py").read_text()  # written once, in pyproject


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run_cli("--version")
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"granite-gguf {PROJECT['version']}"


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "granite_gguf", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: granite-gguf")


def test_no_exact_pins_but_llama_cpp_python() -> None:
    exact = {canonicalize_name(r.name) for r in all_requirements() if any(s.operator == "==" for s in r.specifier)}
    assert exact == EXACTLY_PINNED


def test_every_range_has_a_lower_and_an_upper_bound() -> None:
    for requirement in all_requirements():
        operators = {spec.operator for spec in requirement.specifier}
        if "==" in operators:
            continue
        assert ">=" in operators and "<" in operators, f"{requirement}: give a tested lower bound and the next major as upper"


def test_the_installed_versions_satisfy_the_ranges() -> None:
    """The suite runs on versions inside every range (lower bounds are what was tested)."""
    from importlib.metadata import PackageNotFoundError, version

    for requirement in all_requirements():
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            continue  # an extra this environment does not have (bench, quality)
        assert requirement.specifier.contains(installed, prereleases=True), f"{requirement.name} {installed} not in {requirement}"


def test_missing_extra_table_matches_pyproject() -> None:
    """Each optional module is installed by the extra the error message names."""
    distributions = packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        # a module this environment lacks (the bench extra's) is assumed to be its own distribution's name
        provided_by = {canonicalize_name(d) for d in distributions.get(module, [module])}
        named = {canonicalize_name(r.name) for r in requirements_of(extra)}
        assert provided_by & named, f"{module}: not installed by the '{extra}' extra"
        assert not provided_by & {canonicalize_name(Requirement(t).name) for t in PROJECT["dependencies"]}, \
            f"{module} is a core dependency, not optional"


def test_a_missing_extra_is_one_error_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "granite_gguf.bindings.server", raising=False)
    assert run_cli("serve", str(tmp_path / "model.gguf")) == 2
    assert capsys.readouterr().err == ("error: this needs uvicorn, from the 'serve' extra: "
                                       "pip install 'granite-gguf[serve]'\n")


def llama_cpp_wheels() -> Path:
    """scripts/install.sh's cache of the llama-cpp-python wheel built for this CPU."""
    tag = subprocess.run(["bash", "-c", "source scripts/cpu-flags.sh && printf %s \"$GGML_CPU_TAG\""],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cache = Path(os.environ.get("GRANITE_GGUF_CACHE", Path.home() / ".cache" / "granite-gguf"))
    (pin,) = [Requirement(t) for t in PROJECT["dependencies"] if canonicalize_name(Requirement(t).name) == "llama-cpp-python"]
    (exact,) = pin.specifier
    return cache / f"wheels-llama-cpp-python-{exact.version}-{tag}"


@pytest.mark.slow
@pytest.mark.packaging
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    version = PROJECT["version"]
    (wheel,) = dist.glob(f"granite_gguf-{version}-py3-none-any.whl")
    assert (dist / f"granite_gguf-{version}.tar.gz").is_file()

    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "modelfiles" / "granite-r2").glob("*.Modelfile"))
    assert sorted(Path(n).name for n in names if n.startswith("granite_gguf/modelfiles/granite-r2/")) == shipped
    assert {n.split("/")[0] for n in names} == {"granite_gguf", f"granite_gguf-{version}.dist-info"}
    assert f"granite_gguf-{version}.dist-info/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"granite_gguf-{version}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata

    # A fresh environment, resolved to the versions this suite runs on (no newer torch download).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = tmp_path / "constraints.txt"
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    constraints.write_text("\n".join(line for line in frozen.splitlines() if "==" in line) + "\n")
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                              "--find-links", str(llama_cpp_wheels()), "-c", str(constraints), f"{wheel}[verify]"],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=outside, env=env, capture_output=True, text=True)

    assert run(str(venv / "bin" / "granite-gguf"), "--version").stdout == f"granite-gguf {version}\n"
    where = run(str(venv / "bin" / "python"), "-c", "import granite_gguf; print(granite_gguf.__file__)")
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    assert run(str(venv / "bin" / "python"), "-c", "import convert").returncode != 0  # no generic top-level module
    helped = run(str(venv / "bin" / "python"), "-m", "granite_gguf", "--help")
    assert helped.returncode == 0 and "release" in helped.stdout

    demo = run(str(venv / "bin" / "granite-gguf"), "demo", "--outdir", "out")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "result                  PASS" in demo.stdout
    assert "4. embedded 2 sentences: shape (2, 64)" in demo.stdout

    # The server's extra was not installed: the command says which one to install.
    served = run(str(venv / "bin" / "granite-gguf"), "serve", "out/tiny-gemma3-f16.gguf")
    assert served.returncode == 2
    assert "from the 'serve' extra: pip install 'granite-gguf[serve]'" in served.stderr
    assert "Traceback" not in served.stderr
