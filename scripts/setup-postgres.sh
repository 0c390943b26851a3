#!/usr/bin/env bash
# Prints the directory holding PostgreSQL's server binaries (initdb, postgres)
# for the storage tests (`LLMGW_PG_BIN`), installing Debian's `postgresql`
# package first when they are missing. Idempotent: quick when already present.
# The tests start their own throwaway servers; nothing is started here.
set -euo pipefail

find_bin() {
    local dir
    if [[ -n "${LLMGW_PG_BIN:-}" ]]; then
        candidates=("$LLMGW_PG_BIN")
    else
        # Newest major version first.
        mapfile -t candidates < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4nr)
    fi
    for dir in "${candidates[@]}"; do
        if [[ -x "$dir/initdb" && -x "$dir/postgres" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

if find_bin; then
    exit 0
fi
if [[ -n "${LLMGW_PG_BIN:-}" ]]; then
    echo "LLMGW_PG_BIN=$LLMGW_PG_BIN holds no initdb and postgres" >&2
    exit 1
fi

echo "PostgreSQL binaries not found; installing Debian's postgresql package" >&2
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >&2
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >&2

if ! find_bin; then
    echo "postgresql is installed but no initdb/postgres under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
