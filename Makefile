# llmgw — the README's commands. Build output lives outside the clone (a
# persistent cache that a fresh machine simply starts empty).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/llmgw/target
CONFIG ?= deploy/gateway.yaml
DEBUG_BIN := $(CARGO_TARGET_DIR)/debug
RELEASE_BIN := $(CARGO_TARGET_DIR)/release

.PHONY: up up-cluster down test test-rust test-python test-fuzz fuzz bench soak lint fmt build

## up: build and run every service in one process with deploy/gateway.yaml
up:
	cargo build --release -p llmgw
	$(RELEASE_BIN)/llmgw all --config $(CONFIG)

## up-cluster: a Consul dev agent and the five services as separate processes,
## registered in Consul (LLMGW_DISCOVERY=static: the config's addresses)
up-cluster:
	cargo build --release -p llmgw
	LLMGW_BIN=$(RELEASE_BIN)/llmgw scripts/cluster.sh up $(CONFIG)

## down: stop what up-cluster started
down:
	scripts/cluster.sh down

## test: every test — Rust unit and end-to-end tests, the Python SDK suite,
## then every fuzz target for a short while
test: test-rust test-python test-fuzz

# The storage tests run on SQLite and on throwaway PostgreSQL servers, whose
# binaries setup-postgres.sh provides (installing them if needed); the
# metrics tests scrape the gateway with a real Prometheus (setup-prometheus.sh).
test-rust:
	cargo build -p llmgw -p llmgw-emulators
	LLMGW_PG_BIN="$$(scripts/setup-postgres.sh)" && export LLMGW_PG_BIN && \
	LLMGW_REDIS_BIN="$$(scripts/setup-redis.sh)" && export LLMGW_REDIS_BIN && \
	LLMGW_CONSUL_BIN="$$(scripts/setup-consul.sh)" && export LLMGW_CONSUL_BIN && \
	LLMGW_PROMETHEUS_BIN="$$(scripts/setup-prometheus.sh)" && export LLMGW_PROMETHEUS_BIN && \
		cargo test --workspace

test-python:
	cargo build -p llmgw -p llmgw-emulators
	VENV="$$(scripts/setup-python.sh)" && \
	LLMGW_BIN=$(DEBUG_BIN)/llmgw EMULATOR_BIN=$(DEBUG_BIN)/openai-emulator \
		"$$VENV/bin/python" -m pytest tests/python -q

# Every fuzz target for FUZZ_SECONDS (10 s here); its own build (stable,
# cargo-fuzz from setup-cargo-fuzz.sh) under $(CARGO_TARGET_DIR)/fuzz.
test-fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-10} scripts/fuzz.sh

## fuzz: every fuzz target for FUZZ_SECONDS each (default 20); a crash fails
## and prints the reproducer's path
fuzz:
	scripts/fuzz.sh

## bench: direct vs gateway (one process and split), in one run
bench:
	scripts/bench.sh

## soak: the soak test for SOAK_SECS (600 by default): mixed traffic with faults, then
## memory, upstream connections, cancellations and metering are checked (make test runs 12 s)
SOAK_SECS ?= 600
soak:
	LLMGW_PG_BIN="$$(scripts/setup-postgres.sh)" && export LLMGW_PG_BIN && \
	LLMGW_REDIS_BIN="$$(scripts/setup-redis.sh)" && export LLMGW_REDIS_BIN && \
		LLMGW_SOAK_SECS=$(SOAK_SECS) cargo test -p llmgw --test e2e soak -- --nocapture

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
