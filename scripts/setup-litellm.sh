#!/usr/bin/env bash
# Installs LiteLLM's proxy (the bench's peer, issue 9) from PyPI into its own
# venv and prints the path of its `litellm` command. Idempotent: a stamp
# holding the pinned requirement skips pip when it is already installed.
#
# Pinned to 1.82.6: released through LiteLLM's own CI, before the PyPI
# account compromise of March 2026 (1.82.7 and 1.82.8 carried a credential
# stealer; see BerriAI/litellm#24518). Change the pin only to a version
# whose provenance has been checked.
set -euo pipefail

venv="${LLMGW_LITELLM_VENV:-$HOME/.cache/llmgw/litellm-venv}"
want="litellm[proxy]==1.82.6"
stamp="$venv/.llmgw-requirement"

if [[ -x "$venv/bin/litellm" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$venv/bin/litellm"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$want" >&2
# The compromised releases shipped a `.pth` file that runs on every start.
if compgen -G "$venv/lib/python*/site-packages/litellm_init.pth" >/dev/null; then
    echo "error: $venv has litellm_init.pth (a compromised release); remove the venv" >&2
    exit 1
fi
echo "$want" >"$stamp"
echo "$venv/bin/litellm"
