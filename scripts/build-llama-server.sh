#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the llama.cpp tree inside the llama-cpp-python source distribution
# (the version pyproject.toml pins: the same llama.cpp the bindings run), once per machine, cached outside
# the repository:
#   ${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}/llama-server-<version>-<cpu tag>/llama-server
# and linked as .venv/bin/llama-server; tests/test_llama_server.py runs it against converted files.
#
# Same CPU flags as scripts/install.sh (scripts/cpu-flags.sh: no -march=native, no AMX; a native
# build dies with SIGILL on AMX on this project's machines). GRANITE_GGUF_AMX=1 builds it as install.sh's opt-in
# does: ggml's AMX kernels with scripts/llama-cpp-patches/ggml-amx-tile-config.patch, cached under its own tag.
# Static libraries, so the binary stands alone. No network at run time:
# no OpenSSL, and the web UI is not downloaded (in this llama.cpp, LLAMA_CURL is deprecated and
# ignored; LLAMA_OPENSSL and LLAMA_USE_PREBUILT_UI are the switches that matter).
# The steps shared with build-ollama-runner.sh are in scripts/llama-server-build.sh. About 12 minutes on 2 cores
# (22 minutes, niced, beside three other builds).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp-python-version.sh
source scripts/cpu-flags.sh
source scripts/llama-server-build.sh
version="$LLAMA_CPP_PYTHON_VERSION"
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
binary="$cache/llama-server-$version-$GGML_CPU_TAG/llama-server"
link=llama-server
label=llama-server

reuse_cached_binary
require_tools cmake c++ tar ${GGML_AMX_PATCH:+patch}  # patch: the AMX opt-in only
fetch_sdist llama-cpp-python "$version" "llama_cpp_python-$version.tar.gz"
new_work_folder
echo "building llama-server from llama-cpp-python $version (about 12 minutes on 2 cores, once per machine)…"
tar -xzf "$sdist" -C "$work"
apply_amx_patch "$work/llama_cpp_python-$version/vendor/llama.cpp"
# shellcheck disable=SC2086  # GGML_CPU_FLAGS is a list of -D options
build_and_install "$work/llama_cpp_python-$version/vendor/llama.cpp" $GGML_CPU_FLAGS \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
