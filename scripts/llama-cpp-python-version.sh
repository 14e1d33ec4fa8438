# Sourced by install.sh and build-llama-server.sh: the llama-cpp-python release the project pins exactly,
# read from pyproject.toml (the one place it is written). Sets LLAMA_CPP_PYTHON_VERSION.
LLAMA_CPP_PYTHON_VERSION="$(python3 - <<'PY'
import re, tomllib
dependencies = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
(pin,) = [d for d in dependencies if re.match(r"llama[-_]cpp[-_]python\s*==", d)]
print(pin.split("==")[1].strip())
PY
)"
export LLAMA_CPP_PYTHON_VERSION
