#!/usr/bin/env bash
# Install node-llama-cpp 3.21.1 (npm; it bundles llama.cpp v0.4.0's prebuilt CPU binary) for
# tests/test_node_llama_cpp.py, once per machine, cached:
#   ${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}/node-llama-cpp-3.21.1/node_modules
# Only the linux-x64 CPU build (the CUDA and Vulkan builds, 600 MB, are optional dependencies left out); about 83 MB,
# 15 s. Needs node and npm; without them it says so and leaves the test to fail with that message.
set -euo pipefail
version=3.21.1
cache="${GRANITE_GGUF_CACHE:-$HOME/.cache/granite-gguf}"
dest="$cache/node-llama-cpp-$version"
if [ -f "$dest/node_modules/node-llama-cpp/package.json" ] && [ -d "$dest/node_modules/@node-llama-cpp/linux-x64" ]; then
    echo "node-llama-cpp: $dest (cached)"
    exit 0
fi
for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "note: $tool not found: node-llama-cpp not installed (tests/test_node_llama_cpp.py needs it)" >&2; exit 0; }
done
mkdir -p "$cache"
work="$(mktemp -d "$cache/node-llama-cpp-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo '{"name": "granite-gguf-node-llama-cpp", "private": true}' >"$work/package.json"
(cd "$work" && nice npm install --silent --no-audit --no-fund --save-exact --omit=optional --ignore-scripts \
    "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version")
rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
echo "node-llama-cpp: $dest"
