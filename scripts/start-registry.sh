#!/usr/bin/env bash
# Start the CNCF distribution registry (Debian's docker-registry package) on 127.0.0.1:PORT with
# filesystem storage under DATADIR and no auth, in the background; wait until GET /v2/ answers; print its PID.
# Debian's /etc/docker/registry/config.yml and any REGISTRY_* variables are ignored: the config is generated.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 PORT DATADIR" >&2
    exit 2
fi
port=$1
datadir=$2
registry=$(command -v docker-registry || true)
if [[ -z $registry ]]; then
    echo "docker-registry not found: install it with 'apt-get install -y docker-registry'" >&2
    exit 3
fi

mkdir -p "$datadir/storage"
datadir=$(cd "$datadir" && pwd)
config=$datadir/config.yml
cat >"$config" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $datadir/storage
http:
  addr: 127.0.0.1:$port
YAML

# Only the generated config: drop REGISTRY_* overrides from the environment.
unset $(env | sed -n 's/^\(REGISTRY_[A-Za-z0-9_]*\)=.*/\1/p') 2>/dev/null || true
nohup "$registry" serve "$config" </dev/null >"$datadir/registry.log" 2>&1 &
pid=$!

for _ in $(seq 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then
        echo "$pid"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "docker-registry exited; its log:" >&2
        cat "$datadir/registry.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "docker-registry did not answer on 127.0.0.1:$port within 10 s; its log:" >&2
cat "$datadir/registry.log" >&2
kill "$pid" 2>/dev/null || true
exit 1
