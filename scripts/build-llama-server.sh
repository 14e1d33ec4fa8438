#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the llama.cpp tree inside the llama-cpp-python source distribution
# (the version pyproject.toml pins: the same llama.cpp the bindings run), once per machine, cached outside
# the repository:
#   ${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}/llama-server-<version>-<cpu tag>/llama-server
# and linked as .venv/bin/llama-server; tests/test_llama_server.py runs it against converted files.
#
# Same CPU flags as scripts/install.sh (scripts/cpu-flags.sh: no -march=native, no AMX; a native
# build dies with SIGILL on AMX on this project's machines). Static libraries, so the binary stands alone. No network at run time:
# no OpenSSL, and the web UI is not downloaded (in this llama.cpp, LLAMA_CURL is deprecated and
# ignored; LLAMA_OPENSSL and LLAMA_USE_PREBUILT_UI are the switches that matter).
# The binary is built in a temporary folder and moved into place at the end, so an interrupted build
# never leaves a broken cached binary. About 12 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp-python-version.sh
version="$LLAMA_CPP_PYTHON_VERSION"
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
source scripts/cpu-flags.sh
dest="$cache/llama-server-$version-$GGML_CPU_TAG"
binary="$dest/llama-server"

link_into_venv() {  # .venv/bin/llama-server is where the tests and the README find it
    if [ -d .venv/bin ]; then ln -sfn "$binary" .venv/bin/llama-server; fi
}

if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    link_into_venv
    echo "llama-server: $binary (cached)"
    exit 0
fi

for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (needed to build llama-server)" >&2; exit 2; }
done
python=.venv/bin/python
[ -x "$python" ] || python=python3

sdist_dir="$cache/sdist"
sdist="$sdist_dir/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
    mkdir -p "$sdist_dir"
    "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$sdist_dir"
fi

mkdir -p "$dest"
work="$(mktemp -d "$dest/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "building llama-server from llama-cpp-python $version (about 12 minutes on 2 cores, once per machine)…"
start=$SECONDS
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# shellcheck disable=SC2086  # GGML_CPU_FLAGS is a list of -D options
nice -n 10 cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release $GGML_CPU_FLAGS \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$work/cmake.log" 2>&1 \
    || { cat "$work/cmake.log" >&2; exit 1; }
nice -n 10 cmake --build "$work/build" --config Release --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -n 60 "$work/build.log" >&2; exit 1; }
built="$work/build/bin/llama-server"
"$built" --version >/dev/null 2>&1 || { echo "error: the built llama-server does not run" >&2; exit 1; }
mv -f "$built" "$binary"   # same file system: an atomic rename
link_into_venv
echo "llama-server: $binary (built in $((SECONDS - start)) s)"
