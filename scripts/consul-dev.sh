#!/usr/bin/env bash
# Runs a one-node Consul dev agent in the foreground (exec: signals reach it
# directly), on loopback, with its HTTP API on HTTP_PORT and DNS and gRPC
# off. The server and serf ports default to Consul's (8300-8302); tests and
# the bench pass free ones. CONSUL_BIN is the binary (default: what
# scripts/setup-consul.sh provides).
#   scripts/consul-dev.sh HTTP_PORT [SERVER_PORT SERF_LAN_PORT SERF_WAN_PORT]
set -euo pipefail
[[ $# -eq 1 || $# -eq 4 ]] || { echo "usage: $0 HTTP_PORT [SERVER_PORT SERF_LAN_PORT SERF_WAN_PORT]" >&2; exit 2; }
bin="${CONSUL_BIN:-$("$(dirname "${BASH_SOURCE[0]}")/setup-consul.sh")}"
ports=(-http-port "$1" -dns-port -1 -grpc-port -1)
[[ $# -eq 4 ]] && ports+=(-server-port "$2" -serf-lan-port "$3" -serf-wan-port "$4")
export CHECKPOINT_DISABLE=1
exec "$bin" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -log-level warn \
    -node "llmgw-dev-$1" "${ports[@]}"
