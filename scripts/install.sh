#!/usr/bin/env bash
# Create .venv and install granite-gguf with the extras named in $1 (default: test).
#
# llama-cpp-python (the version pyproject.toml pins) is compiled from source once per machine and cached as a wheel in
# $GRANITE_GGUF_CACHE (default ~/.cache/granite-gguf), one cache per CPU feature set (and per CMAKE_ARGS
# of the user's, e.g. CMAKE_ARGS="-DGGML_CUDA=on" bash scripts/install.sh for a CUDA build). The CPU
# options come from scripts/cpu-flags.sh: every x86 extension the CPU reports except AMX, whose ggml kernels
# die with SIGILL as GCC 12 compiles them. GRANITE_GGUF_AMX=1 bash scripts/install.sh opts in: AMX on, with
# scripts/llama-cpp-patches/ggml-amx-tile-config.patch applied to the sdist's llama.cpp, in a wheel cache of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
source scripts/cpu-flags.sh
source scripts/llama-cpp-python-version.sh
version="$LLAMA_CPP_PYTHON_VERSION"
# A user's own CMAKE_ARGS (e.g. -DGGML_CUDA=on for `--gpu-layers`) come after the CPU flags, so they win,
# and name a wheel cache of their own: a GPU wheel never stands in for a CPU one, nor the reverse.
user_cmake_args="${CMAKE_ARGS:-}"
tag="$GGML_CPU_TAG${user_cmake_args:+-user-$(printf '%s' "$user_cmake_args" | sha256sum | cut -c1-8)}"
wheels="$cache/wheels-llama-cpp-python-$version-$tag"
export CMAKE_ARGS="$GGML_CPU_FLAGS${user_cmake_args:+ $user_cmake_args}"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $version from source (about 7 minutes on 2 cores, once per machine)…"
    mkdir -p "$wheels"
    if [ -z "$GGML_AMX_PATCH" ]; then
        .venv/bin/python -m pip wheel --quiet --no-deps --no-binary llama-cpp-python --no-cache-dir \
            -w "$wheels" "llama-cpp-python==$version"
    else  # GRANITE_GGUF_AMX=1: the pinned sdist with the patch applied to its llama.cpp, built from the folder
        source scripts/llama-server-build.sh
        fetch_sdist llama-cpp-python "$version" "llama_cpp_python-$version.tar.gz"
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        tar -xzf "$sdist" -C "$work"
        apply_amx_patch "$work/llama_cpp_python-$version/vendor/llama.cpp"
        .venv/bin/python -m pip wheel --quiet --no-deps --no-cache-dir -w "$wheels" "$work/llama_cpp_python-$version"
    fi
fi
.venv/bin/python -m pip install --quiet --find-links "$wheels" "llama-cpp-python==$version"
.venv/bin/python -m pip install --quiet --find-links "$wheels" -e ".[$extras]"
