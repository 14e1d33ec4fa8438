# Sourced by build-llama-server.sh and build-ollama-runner.sh (install.sh's AMX build uses fetch_sdist and
# apply_amx_patch): the steps both builds of llama.cpp's `llama-server` share. The caller sets `cache` (the cache
# root), `binary` (where the built server is kept), `link` (its name in .venv/bin) and `label` (how messages name
# it). The binary is built in a temporary folder beside it and moved into place at the end, so an interrupted build
# never leaves a broken cached binary.

link_into_venv() {  # .venv/bin/$link is where the tests and the docs find the server
    if [ -d .venv/bin ]; then ln -sfn "$binary" ".venv/bin/$link"; fi
}

# Exit 0 at once when the cached binary runs (and link it).
reuse_cached_binary() {
    if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
        link_into_venv
        echo "$label: $binary (cached)"
        exit 0
    fi
}

# GRANITE_GGUF_AMX=1 (scripts/cpu-flags.sh) is for the builds of the pinned llama-cpp-python's llama.cpp
# (install.sh, build-llama-server.sh), which apply its patch; ggml's AMX kernels without it die with SIGILL, and
# the patch is written for that llama.cpp, not for the ollama runner's.
refuse_amx_opt_in() {
    if [ -n "${GGML_AMX_PATCH:-}" ]; then
        echo "error: GRANITE_GGUF_AMX=1 is for scripts/install.sh and build-llama-server.sh only; unset it to build $label" >&2
        exit 2
    fi
}

# apply_amx_patch LLAMA_CPP_DIR: with GRANITE_GGUF_AMX=1, apply $GGML_AMX_PATCH to that llama.cpp tree exactly
# (--fuzz=0: a patch that no longer fits stops the build instead of landing elsewhere); without it, nothing.
apply_amx_patch() {
    [ -n "${GGML_AMX_PATCH:-}" ] || return 0
    patch -p1 --forward --batch --fuzz=0 -d "$1" <"$GGML_AMX_PATCH" >"$work/patch.log" 2>&1 \
        || { cat "$work/patch.log" >&2; echo "error: $GGML_AMX_PATCH does not apply to $1" >&2; exit 1; }
}

require_tools() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "error: $tool not found (needed to build $label)" >&2; exit 2; }
    done
}

# fetch_sdist NAME VERSION FILE: download NAME==VERSION's source distribution once into $cache/sdist and set
# `sdist` to its path. --no-binary names the package alone: with ":all:" pip would also build the sdist's build
# dependencies (cmake among them) from source just to read its metadata.
fetch_sdist() {
    local python=.venv/bin/python
    [ -x "$python" ] || python=python3
    sdist="$cache/sdist/$3"
    if [ ! -f "$sdist" ]; then
        mkdir -p "$cache/sdist"
        "$python" -m pip download --quiet --no-deps --no-binary "$1" "$1==$2" -d "$cache/sdist"
    fi
}

# new_work_folder: a temporary folder beside the binary (same file system: the final move is a rename) in `work`,
# removed on exit.
new_work_folder() {
    mkdir -p "$(dirname "$binary")"
    work="$(mktemp -d "$(dirname "$binary")/build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    build_started=$SECONDS
}

# build_and_install SOURCE [CMAKE OPTION…]: configure SOURCE into $work/build, build llama-server, check that it
# runs, move it into place and link it.
build_and_install() {
    local source="$1"
    shift
    nice -n 10 cmake -S "$source" -B "$work/build" -DCMAKE_BUILD_TYPE=Release "$@" >"$work/cmake.log" 2>&1 \
        || { cat "$work/cmake.log" >&2; exit 1; }
    nice -n 10 cmake --build "$work/build" --config Release --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
        || { tail -n 60 "$work/build.log" >&2; exit 1; }
    local built="$work/build/bin/llama-server"
    "$built" --version >/dev/null 2>&1 || { echo "error: the built $label does not run" >&2; exit 1; }
    mv -f "$built" "$binary"
    link_into_venv
    echo "$label: $binary (built in $((SECONDS - build_started)) s)"
}
