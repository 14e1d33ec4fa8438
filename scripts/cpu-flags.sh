# Sourced by install.sh and build-llama-server.sh: the llama.cpp CPU build options for this machine.
#
# Each x86 extension the CPU reports in /proc/cpuinfo is switched on by name, AMX never: a build with
# AMX (-march=native, or GGML_AMX_INT8) dies with SIGILL at ggml's first AMX `tilezero`. Not the sandbox:
# AMX works here once the process asks for it (oneDNN/OpenVINO use it); GCC 12 drops the stores that fill
# ggml's tile configuration before `ldtilecfg` (amx/mmq.cpp, ggml_tile_config_init), so every tile is 0x0
# (docs/performance.md, issue 23: the three-line fix and its GEMM speed). AVX512-VNNI matters most
# without AMX: llama.cpp's int8 dot products (q8_0 and the K-quants) use it.
# Sets GGML_CPU_FLAGS (cmake -D options) and GGML_CPU_TAG (names the caches built with them).
GGML_CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=ON"
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512_vnni:AVX512_VNNI \
            avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI avx_vnni:AVX_VNNI; do
    if grep -qw "${pair%%:*}" /proc/cpuinfo 2>/dev/null; then
        GGML_CPU_FLAGS="$GGML_CPU_FLAGS -DGGML_${pair##*:}=ON"
    fi
done
GGML_CPU_TAG="cpu-$(printf '%s' "$GGML_CPU_FLAGS" | sha256sum | cut -c1-8)-noamx"
export GGML_CPU_FLAGS GGML_CPU_TAG
