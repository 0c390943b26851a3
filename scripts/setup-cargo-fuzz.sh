#!/usr/bin/env bash
# Makes sure a `cargo-fuzz` binary is present (from crates.io), for `make fuzz`
# and the short fuzz stage of `make test`. Idempotent; quick when present.
# Installs into ~/.cache/llmgw/cargo-fuzz (override: LLMGW_CARGO_FUZZ_ROOT) so
# it never touches ~/.cargo/bin. Prints the binary's path.
set -euo pipefail
root="${LLMGW_CARGO_FUZZ_ROOT:-$HOME/.cache/llmgw/cargo-fuzz}"
bin="$root/bin/cargo-fuzz"
if [ ! -x "$bin" ]; then
  echo "installing cargo-fuzz into $root (crates.io)" >&2
  # Its own target dir: never the project's, and thrown away afterwards.
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  CARGO_TARGET_DIR="$tmp" cargo install cargo-fuzz --locked --root "$root" >&2
fi
echo "$bin"
