#!/usr/bin/env bash
# The local stack: a Consul dev agent and the five llmgw services, each its
# own process, registered in Consul and finding each other through it
# (`services.discovery: consul`, set through LLMGW_DISCOVERY).
#   scripts/cluster.sh up CONFIG    start (logs and pids under .cluster/)
#   scripts/cluster.sh down         stop (services first, Consul last)
# LLMGW_DISCOVERY=static runs the services at the config's static addresses
# without Consul. CONSUL_HTTP_ADDR (default http://127.0.0.1:8500) is where
# the agent's HTTP API listens.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$root/.cluster"
bin="${LLMGW_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/llmgw/target}/release/llmgw}"
roles=(auth router adapter metering edge)
export LLMGW_DISCOVERY="${LLMGW_DISCOVERY:-consul}"
export CONSUL_HTTP_ADDR="${CONSUL_HTTP_ADDR:-http://127.0.0.1:8500}"

stop_pid() {
    local pidfile="$state/$1.pid"
    [[ -f "$pidfile" ]] || return 0
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    # A service drains its in-flight requests (shutdown.drain) before exiting.
    for _ in $(seq 350); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
}

down() {
    [[ -d "$state" ]] || return 0
    # The edge first (no new requests), Consul last (so every service can
    # deregister).
    for role in edge adapter router auth metering prometheus prom-sd consul; do
        stop_pid "$role"
    done
    echo "cluster stopped"
}

wait_http() { # URL WHAT PIDFILE
    for _ in $(seq 100); do
        if ! kill -0 "$(cat "$3")" 2>/dev/null; then
            echo "$2 failed to start:" >&2
            cat "$state/$2.log" >&2
            down
            exit 1
        fi
        curl -fsS "$1" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    echo "$2 did not become ready" >&2
    down
    exit 1
}

# Prometheus (Debian's package, scripts/setup-prometheus.sh) scraping every
# service's /metrics. Debian builds Prometheus without Consul discovery, so
# a loop writes the passing instances Consul knows (with static discovery:
# the config's addresses) into a file_sd file every 5 s; replicas that join
# or leave are picked up without a restart. deploy/prometheus.yml is the
# consul_sd_configs equivalent for an upstream Prometheus build.
targets() {
    local from="$config"
    [[ "$LLMGW_DISCOVERY" == consul ]] && from="$CONSUL_HTTP_ADDR"
    "$root/scripts/prom-targets.py" "$LLMGW_DISCOVERY" "$from" >"$state/prom-targets.tmp" &&
        mv "$state/prom-targets.tmp" "$state/prom-targets.json"
}

prometheus() {
    local prom addr="${PROMETHEUS_ADDR:-127.0.0.1:9090}"
    prom="$("$root/scripts/setup-prometheus.sh")"
    printf '%s\n' \
        'global: {scrape_interval: 5s, evaluation_interval: 5s}' \
        'scrape_configs:' \
        '  - job_name: llmgw' \
        '    metrics_path: /metrics' \
        '    file_sd_configs:' \
        "      - {files: [\"$state/prom-targets.json\"], refresh_interval: 5s}" >"$state/prometheus.yml"
    targets
    (while sleep 5; do targets 2>/dev/null || true; done) &
    echo $! >"$state/prom-sd.pid"
    "$prom" --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/prometheus" \
        --web.listen-address="$addr" >"$state/prometheus.log" 2>&1 &
    echo $! >"$state/prometheus.pid"
    wait_http "http://$addr/-/ready" prometheus "$state/prometheus.pid"
    echo "prometheus: http://$addr (scraping every service's /metrics)"
}

up() {
    config="$1"
    down >/dev/null
    mkdir -p "$state"
    if [[ "$LLMGW_DISCOVERY" == consul ]]; then
        local http_port
        http_port="${CONSUL_HTTP_ADDR##*:}"
        http_port="${http_port%%/*}"
        "$root/scripts/consul-dev.sh" "$http_port" >"$state/consul.log" 2>&1 &
        echo $! >"$state/consul.pid"
        wait_http "$CONSUL_HTTP_ADDR/v1/status/leader" consul "$state/consul.pid"
        echo "consul: $CONSUL_HTTP_ADDR/ui"
    fi

    # auth first: on an empty store it creates the default org and prints its key.
    for role in "${roles[@]}"; do
        "$bin" "$role" --config "$config" >"$state/$role.out" 2>"$state/$role.log" &
        echo $! >"$state/$role.pid"
    done
    # Ready when the edge says it listens; fail fast if any process died.
    for _ in $(seq 100); do
        for role in "${roles[@]}"; do
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
    prometheus
    cat "$state/auth.out"
    echo "cluster running ($LLMGW_DISCOVERY discovery): logs in $state/*.log; stop with 'make down'"
}

case "${1:-}" in
    up) up "${2:-$root/deploy/gateway.yaml}" ;;
    down) down ;;
    *) echo "usage: $0 up CONFIG | down" >&2; exit 2 ;;
esac
