# Sourced by install.sh and build-llama-server.sh: the llama.cpp CPU build options for this machine.
#
# Each x86 extension the CPU reports in /proc/cpuinfo is switched on by name, AMX only on request (below): an
# unpatched build with AMX (-march=native, or GGML_AMX_INT8) dies with SIGILL at ggml's first AMX `tilezero`. Not
# the sandbox: AMX works here once the process asks for it (oneDNN/OpenVINO use it); GCC 12 drops the stores that
# fill ggml's tile configuration before `ldtilecfg` (amx/mmq.cpp, ggml_tile_config_init), so every tile is 0x0
# (docs/performance.md, issue 23; the fix is scripts/llama-cpp-patches/ggml-amx-tile-config.patch). AVX512-VNNI
# matters most without AMX: llama.cpp's int8 dot products (q8_0 and the K-quants) use it.
# Sets GGML_CPU_FLAGS (cmake -D options), GGML_CPU_TAG (names the caches built with them) and GGML_AMX_PATCH.
GGML_CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=ON"
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512_vnni:AVX512_VNNI \
            avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI avx_vnni:AVX_VNNI; do
    if grep -qw "${pair%%:*}" /proc/cpuinfo 2>/dev/null; then
        GGML_CPU_FLAGS="$GGML_CPU_FLAGS -DGGML_${pair##*:}=ON"
    fi
done
# GRANITE_GGUF_AMX=1 (opt-in: scripts/install.sh and build-llama-server.sh) adds ggml's AMX kernels and names
# the patch that makes them work (GGML_AMX_PATCH, empty without the opt-in); the tag then says `amx` and the
# patch's sha256 prefix, so an AMX build never stands in for the default one, nor one patch's build for another's.
GGML_AMX_PATCH=""
if [ "${GRANITE_GGUF_AMX:-}" = 1 ]; then
    if ! grep -qw amx_tile /proc/cpuinfo 2>/dev/null || ! grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
        echo "error: GRANITE_GGUF_AMX=1, but /proc/cpuinfo reports no amx_tile/amx_int8: this CPU has no AMX" >&2
        exit 2
    fi
    GGML_AMX_PATCH="scripts/llama-cpp-patches/ggml-amx-tile-config.patch"
    GGML_CPU_FLAGS="$GGML_CPU_FLAGS -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON"
    if grep -qw amx_bf16 /proc/cpuinfo; then GGML_CPU_FLAGS="$GGML_CPU_FLAGS -DGGML_AMX_BF16=ON"; fi
    amx_patch_sha="$(sha256sum "$GGML_AMX_PATCH" | cut -c1-8)"
    GGML_CPU_TAG="cpu-$(printf '%s' "$GGML_CPU_FLAGS" | sha256sum | cut -c1-8)-amx-$amx_patch_sha"
else
    GGML_CPU_TAG="cpu-$(printf '%s' "$GGML_CPU_FLAGS" | sha256sum | cut -c1-8)-noamx"
fi
export GGML_CPU_FLAGS GGML_CPU_TAG GGML_AMX_PATCH
