#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ (or those named) for FUZZ_SECONDS each,
# after one build of them all (stable toolchain, no sanitizer: libFuzzer's
# coverage and Rust's own checks; debug assertions and overflow checks on).
#
#   scripts/fuzz.sh [target...]      FUZZ_SECONDS=20 by default
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read
# only) plus what earlier runs found (kept under the build dir). A crash, a
# hang (FUZZ_TIMEOUT seconds on one input) or an allocation beyond
# FUZZ_RSS_MB fails the run; the input is written under fuzz/artifacts/ and
# its path printed with the command that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
timeout="${FUZZ_TIMEOUT:-10}"
rss_mb="${FUZZ_RSS_MB:-2048}"
target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/llmgw/target}/fuzz"
cargo_fuzz="$(scripts/setup-cargo-fuzz.sh)"
# The fuzz crate's own workspace and lock file; the main target dir's
# builds are never touched (other flags, other artifacts).
build=("$cargo_fuzz" fuzz build -s none --codegen-units 16 --target-dir "$target_dir")
start=$SECONDS
if [ $# -gt 0 ]; then
  for t in "$@"; do "${build[@]}" "$t"; done
  targets=("$@")
else
  "${build[@]}"
  mapfile -t targets < <("$cargo_fuzz" fuzz list)
fi
echo "fuzz: built in $((SECONDS - start))s; ${seconds}s per target: ${targets[*]}" >&2
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
failed=()
for t in "${targets[@]}"; do
  work="$target_dir/corpus/$t"
  artifacts="fuzz/artifacts/$t/"
  mkdir -p "$work" "$artifacts"
  log="$target_dir/$t.log"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  if "$bin_dir/$t" "$work" "fuzz/corpus/$t" "${dict[@]}" \
      -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_mb" \
      -max_len=16384 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz: $t ok: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') runs, $(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+')" >&2
  else
    failed+=("$t")
    echo "fuzz: $t FAILED (log: $log)" >&2
    # The end of the log holds the panic or libFuzzer's verdict; tail reads
    # it all (head would stop early and fail the pipe under pipefail).
    grep -vE '^(#[0-9]+|INFO:|WARNING: Failed to find|[[:space:]]*NEW_FUNC)' "$log" | tail -60 >&2 || true
    for a in $(grep -oE "Test unit written to [^ ]+" "$log" | awk '{print $5}'); do
      echo "fuzz: reproducer: $a" >&2
      echo "fuzz: reproduce:  $bin_dir/$t $a   (or: cargo fuzz run -s none $t $a)" >&2
    done
  fi
done
echo "fuzz: done in $((SECONDS - start))s" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
