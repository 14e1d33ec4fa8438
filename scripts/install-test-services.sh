#!/usr/bin/env bash
# System packages the test suite runs for real: Debian's docker-registry (the CNCF distribution
# registry), started on loopback by tests/test_registry.py. Needs root (or sudo) the first time.
set -euo pipefail
if ! command -v docker-registry >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y docker-registry
fi
# Debian's own service on :5000 is not used; the tests start their own registry.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
