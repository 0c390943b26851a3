#!/usr/bin/env bash
# Makes sure a `consul` agent binary is present, for the discovery tests and
# `make up-cluster`. Debian bookworm has no consul package; bullseye ships
# 1.8.7, a static binary that runs here. Its .deb is fetched with apt-get
# download through a private sources list (the system's apt sources are not
# touched) and unpacked into a cache. Idempotent; quick when present.
# Prints the binary's path.
set -euo pipefail
cache="${LLMGW_CACHE:-$HOME/.cache/llmgw}/consul"
bin="$cache/consul"
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi
if command -v consul >/dev/null 2>&1; then
  command -v consul
  exit 0
fi
echo "installing consul (Debian bullseye package)" >&2
d="$(mktemp -d)"
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
echo "deb http://deb.debian.org/debian bullseye main" >"$d/sources.list"
o=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
apt-get "${o[@]}" -qq update >&2
(cd "$d" && apt-get "${o[@]}" -qq download consul >&2)
dpkg -x "$d"/consul_*.deb "$d/x"
mkdir -p "$cache"
# Copy then rename: a concurrent run never sees a half-written binary.
cp "$d/x/usr/bin/consul" "$bin.tmp.$$"
chmod +x "$bin.tmp.$$"
mv "$bin.tmp.$$" "$bin"
echo "$bin"
