#!/usr/bin/env bash
# `make bench`: builds the release binaries once, then runs `llmgw-bench`, which
# starts the emulator (OpenAI, Anthropic and Bedrock routes) and the gateway (one
# process, then split), runs the scenarios direct vs gateway in alternating rounds
# (S4a / S4b: streams through the Anthropic and Bedrock adapters against the
# emulator called in that provider's own format; R: the router, a one-target
# model vs a pool of three, then the pool with one target failing every fifth
# request so the gateway falls back; G: governance — a key with rate limits and
# a budget, in process and with Redis, against a plain key), prints the table and writes
# bench/results/latest.json. Everything it starts it also stops.
# S2 (20 / 60 ms upstream, 16 / 64 / 256 clients), S3 (open-loop ceiling at
# p99 < 10 ms), S4 paced (64 chunks 20 ms apart: 1 at a time, 256 in flight, 256 started together), S5
# (1,000 streams: RSS of every process) and S6 (twice the S3 ceiling:
# refused at once, metering against the emulator's count) are described in
# README "Performance". The peer, LiteLLM's proxy, is installed into its own
# venv by scripts/setup-litellm.sh and runs S1, S2 and S4 beside the gateway.
#
#   BENCH_QUICK=1 scripts/bench.sh     # a short smoke run of every scenario
#   scripts/bench.sh --rounds 3        # extra arguments go to llmgw-bench (--help)
#   scripts/bench.sh --only R          # just the router scenario (or e.g. --only s1,r)
#   scripts/bench.sh --only G          # just governance
#   scripts/bench.sh --only peer       # S1, S2, S4 with LiteLLM beside the gateway
#   scripts/bench.sh --no-peer         # everything but the peer (BENCH_NO_PEER=1 too)
# The split cluster finds its services through a Consul dev agent
# (scripts/setup-consul.sh), as deployed; BENCH_STATIC=1 uses static
# addresses instead.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/llmgw/target}"

cd "$root"
LLMGW_REDIS_BIN="${LLMGW_REDIS_BIN:-$(scripts/setup-redis.sh)}"
export LLMGW_REDIS_BIN
if [[ -z "${BENCH_STATIC:-}" && -z "${BENCH_CONSUL:-}" ]]; then
    BENCH_CONSUL="$(scripts/setup-consul.sh)"
    export BENCH_CONSUL
fi
if [[ -z "${BENCH_NO_PEER:-}" && " $* " != *" --no-peer "* && -z "${BENCH_LITELLM:-}" ]]; then
    BENCH_LITELLM="$(scripts/setup-litellm.sh)"
    export BENCH_LITELLM
fi
# S5 and S6 hold thousands of connections (each one a descriptor in the
# bench, the gateway and the emulator).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -p llmgw -p llmgw-emulators -p llmgw-bench
bin="$CARGO_TARGET_DIR/release"
exec "$bin/llmgw-bench" --llmgw "$bin/llmgw" --emulator "$bin/openai-emulator" "$@"
