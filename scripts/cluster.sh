#!/usr/bin/env bash
# Runs the five llmgw services as separate processes talking gRPC, with the
# addresses of the config's `services:` section (static discovery).
#   scripts/cluster.sh up CONFIG    start (logs and pids under .cluster/)
#   scripts/cluster.sh down         stop
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$root/.cluster"
bin="${LLMGW_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/llmgw/target}/release/llmgw}"

down() {
    [[ -d "$state" ]] || return 0
    for pidfile in "$state"/*.pid; do
        [[ -f "$pidfile" ]] || continue
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$pidfile"
    done
    echo "cluster stopped"
}

up() {
    local config="$1"
    down >/dev/null
    mkdir -p "$state"
    # auth first: on an empty store it creates the default org and prints its key.
    for role in auth router adapter metering edge; do
        "$bin" "$role" --config "$config" >"$state/$role.out" 2>"$state/$role.log" &
        echo $! >"$state/$role.pid"
    done
    # Ready when the edge says it listens; fail fast if any process died.
    for _ in $(seq 100); do
        for role in auth router adapter metering edge; do
            if ! kill -0 "$(cat "$state/$role.pid")" 2>/dev/null; then
                echo "$role failed to start:" >&2
                cat "$state/$role.log" >&2
                down
                exit 1
            fi
        done
        grep -q "edge listening" "$state/edge.log" && break
        sleep 0.1
    done
    cat "$state/auth.out"
    echo "cluster running: logs in $state/*.log; stop with 'make down'"
}

case "${1:-}" in
    up) up "${2:-$root/deploy/gateway.yaml}" ;;
    down) down ;;
    *) echo "usage: $0 up CONFIG | down" >&2; exit 2 ;;
esac
