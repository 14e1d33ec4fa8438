#!/usr/bin/env bash
# Services the test suite runs for real: Debian's docker-registry (the CNCF distribution registry) and nginx
# (serves its blobs to pull clients), started on loopback by scripts/start-registry.sh for tests/test_registry.py
# and tests/test_ollama.py (needs root or sudo the first time); and a real ollama (scripts/install-ollama.sh,
# cached, no root), which tests/test_ollama.py and tests/test_modelfile_differential.py start; and node-llama-cpp
# (scripts/install-node-llama-cpp.sh, npm, cached) for tests/test_node_llama_cpp.py.
set -euo pipefail
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
PATH=$PATH:/usr/sbin command -v nginx >/dev/null || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y "${missing[@]}"
fi
# Debian's own services (registry on :5000, nginx on :80) are not used; the tests start their own.
for service in docker-registry nginx; do
    systemctl disable --now "$service" >/dev/null 2>&1 || true
done
bash "$(dirname "$0")/install-ollama.sh"
bash "$(dirname "$0")/install-node-llama-cpp.sh"
