#!/usr/bin/env bash
# Makes sure a `redis-server` binary is present (Debian's package), for the
# tests that start their own throwaway Redis. Idempotent; quick when present.
# Prints the binary's path.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package)" >&2
  export DEBIAN_FRONTEND=noninteractive
  sudo_=""
  [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq >&2 || true
  # No service is started: the package's init scripts cannot run here, and
  # the tests run their own server on a free port.
  $sudo_ apt-get install -y -qq --no-install-recommends redis-server >&2
fi
command -v redis-server
