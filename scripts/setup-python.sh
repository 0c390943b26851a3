#!/usr/bin/env bash
# Creates (or refreshes) the Python venv used by tests/python and prints its path.
# Idempotent: a stamp holding the requirements' hash skips pip when nothing changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LLMGW_VENV:-$HOME/.cache/llmgw/venv}"
req="$root/tests/python/requirements.txt"
stamp="$venv/.llmgw-requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$venv"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" >"$stamp"
echo "$venv"
