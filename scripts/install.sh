#!/usr/bin/env bash
# Create .venv and install granite-gguf with the extras named in $1 (default: test).
#
# llama-cpp-python 0.3.36 is compiled from source once per machine and cached as a wheel in
# $GRANITE_GGUF_CACHE (default ~/.cache/granite-gguf). It is built without -march=native: on
# machines whose CPU advertises AMX but whose sandbox does not allow it (seen on this project's
# machines), a native build dies with SIGILL in the first quantized matrix product.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
wheels="$cache/wheels-llama-cpp-python-0.3.36-x86-64-v4-noamx"
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_OPENMP=ON"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! ls "$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python 0.3.36 from source (about 7 minutes on 2 cores, once per machine)…"
    mkdir -p "$wheels"
    .venv/bin/python -m pip wheel --quiet --no-deps --no-binary llama-cpp-python --no-cache-dir \
        -w "$wheels" "llama-cpp-python==0.3.36"
fi
.venv/bin/python -m pip install --quiet --find-links "$wheels" "llama-cpp-python==0.3.36"
.venv/bin/python -m pip install --quiet --find-links "$wheels" -e ".[$extras]"
