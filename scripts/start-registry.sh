#!/usr/bin/env bash
# Start a registry that `ollama pull` can download from, on loopback, in the background:
#   - Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1:PORT, filesystem storage under
#     DATADIR/storage, no auth, with distribution's `redirect` storage middleware: a blob GET answers
#     307 Location: http://127.0.0.2:BLOB_PORT/<storage path>;
#   - Debian's nginx on 127.0.0.2:BLOB_PORT (a free port) serving those blob files with Range support.
# ollama's pull client (server/download.go, blobDownload.run) follows a redirect to the host *name* it asked
# (ports are not compared) and needs the first redirect to another host name as its direct URL; a redirect it
# follows ends at nginx's 200 without a Location: "http: no Location header in response". So the blob server
# has a host name nobody addresses the registry by: 127.0.0.2, a third loopback address (Linux routes all of
# 127.0.0.0/8 to lo), and both 127.0.0.1:PORT and localhost:PORT work. Configs: scripts/registry/{config.yml,nginx.conf}.
# --no-redirect starts the registry alone, serving blobs itself with 200 (what a default registry does).
# Waits until each answers; prints the PID of each process it started, one per line (registry first).
# Debian's /etc/docker/registry/config.yml and any REGISTRY_* variables are ignored.
set -euo pipefail

redirect=true
if [[ ${1:-} == --no-redirect ]]; then
    redirect=false
    shift
fi
if [[ $# -ne 2 ]]; then
    echo "usage: $0 [--no-redirect] PORT DATADIR" >&2
    exit 2
fi
port=$1
datadir=$2
here=$(cd "$(dirname "$0")" && pwd)
missing() {
    echo "$1 not found: install it with 'apt-get install -y $1' (scripts/install-test-services.sh)" >&2
    exit 3
}
registry=$(command -v docker-registry) || missing docker-registry
if [[ $redirect == true ]]; then
    nginx=$(PATH=$PATH:/usr/sbin command -v nginx) || missing nginx
fi

mkdir -p "$datadir/storage" "$datadir/nginx-temp"
datadir=$(cd "$datadir" && pwd)
blob_host=127.0.0.2
blob_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("'$blob_host'", 0)); print(s.getsockname()[1])')
fill() {
    sed -e "s|@DATADIR@|$datadir|g" -e "s|@PORT@|$port|g" -e "s|@BLOB_HOST@|$blob_host|g" -e "s|@BLOB_PORT@|$blob_port|g" \
        -e "s|@BLOB_URL@|http://$blob_host:$blob_port|g" -e "s|@NO_REDIRECT@|$([[ $redirect == true ]] && echo false || echo true)|g" \
        -e "s|@USER@|$(id -un) $(id -gn)|g" "$1" >"$2"
}
fill "$here/registry/config.yml" "$datadir/config.yml"

started=()
stop_started() {
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
}
# wait_for NAME PID LOG URL: until URL answers any HTTP status; on failure show LOG, stop what was started.
wait_for() {
    for _ in $(seq 100); do
        if [[ $(curl -sS -o /dev/null -w '%{http_code}' "$4" 2>/dev/null) != 000 ]]; then
            return 0
        fi
        if ! kill -0 "$2" 2>/dev/null; then
            echo "$1 exited; its log:" >&2
            cat "$3" >&2
            stop_started
            exit 1
        fi
        sleep 0.1
    done
    echo "$1 did not answer on $4 within 10 s; its log:" >&2
    cat "$3" >&2
    stop_started
    exit 1
}

# Only the generated config: drop REGISTRY_* overrides from the environment.
unset $(env | sed -n 's/^\(REGISTRY_[A-Za-z0-9_]*\)=.*/\1/p') 2>/dev/null || true
nohup "$registry" serve "$datadir/config.yml" </dev/null >"$datadir/registry.log" 2>&1 &
started+=($!)
wait_for docker-registry "$!" "$datadir/registry.log" "http://127.0.0.1:$port/v2/"

if [[ $redirect == true ]]; then
    fill "$here/registry/nginx.conf" "$datadir/nginx.conf"
    nohup "$nginx" -p "$datadir" -c "$datadir/nginx.conf" -e "$datadir/nginx-error.log" \
        </dev/null >"$datadir/nginx.log" 2>&1 &
    started+=($!)
    wait_for nginx "$!" "$datadir/nginx-error.log" "http://$blob_host:$blob_port/"
fi
printf '%s\n' "${started[@]}"
