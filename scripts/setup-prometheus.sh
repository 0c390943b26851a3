#!/usr/bin/env bash
# Makes sure a `prometheus` server binary is present, for the tests that run
# a real Prometheus against the gateway's /metrics. Idempotent; quick when
# present. Prints the binary's path.
#
# A `prometheus` on PATH is used as is. Otherwise Debian's package is
# downloaded and unpacked (never installed: no service is started, nothing in
# /etc changes) under ~/.cache/llmgw/prometheus.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  command -v prometheus
  exit 0
fi
dest="${LLMGW_CACHE:-$HOME/.cache/llmgw}/prometheus"
bin="$dest/usr/bin/prometheus"
if [ ! -x "$bin" ]; then
  echo "fetching prometheus (Debian package, unpacked into $dest)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download prometheus >&2 2>/dev/null); then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq >&2 || true
    (cd "$work" && apt-get download prometheus >&2)
  fi
  mkdir -p "$dest"
  dpkg -x "$work"/prometheus_*.deb "$dest"
fi
"$bin" --version >/dev/null 2>&1 || { echo "prometheus at $bin does not run" >&2; exit 1; }
echo "$bin"
