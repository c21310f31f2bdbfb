#!/usr/bin/env bash
# A short coverage-guided run of every fuzz target (every parser of network input has
# one, see docs/fuzzing.md). Part of ci/test.sh; fails on the first crash, hang or
# out-of-memory and prints the input that caused it.
#
# Needs only stable Rust and a C++ compiler: the targets are built with plain cargo and
# the same instrumentation flags `cargo fuzz build --sanitizer none` passes (all stable
# rustc options), so neither cargo-fuzz nor a nightly toolchain is required.
#
#   ci/fuzz.sh                      # every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=300 ci/fuzz.sh frame heartbeat   # longer, only these targets
#   FUZZ_RUNS=100000 ci/fuzz.sh     # a fixed number of inputs instead of a time budget
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Every cargo-fuzz crate of the tree (today engine, nvme, rdma-transport, standby): a new
# one is run without a change here.
crates=()
for m in */fuzz/Cargo.toml; do crates+=("$(dirname "$m")"); done
secs=${FUZZ_SECONDS:-20}
runs=${FUZZ_RUNS:-}
only=("$@")

triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
# Kept under target/ (not the source tree) so a run leaves nothing to commit.
work=$target_dir/work
mkdir -p "$work"

# `--target` keeps these flags off build scripts and proc macros, as cargo-fuzz does.
# Debug assertions and overflow checks are on: a fuzz run should trip them.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TERM_COLOR=never

wanted() {
  [ ${#only[@]} -eq 0 ] && return 0
  local t
  for t in "${only[@]}"; do [ "$t" = "$1" ] && return 0; done
  return 1
}

fuzz_one() {
  local bin=$1 exe=$2
  local corpus=$work/corpus/$bin artifacts=$work/artifacts/$bin log=$work/$bin.log
  rm -rf "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  local budget=(-max_total_time="$secs")
  [ -n "$runs" ] && budget=(-runs="$runs")
  local start=$SECONDS rc=0
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: the default, stated.
  "$exe" "${budget[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1 || rc=$?
  local execs cov
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-14s %4ss  execs %-10s cov %-6s corpus %s\n' "$bin" $((SECONDS - start)) \
    "${execs:-?}" "${cov:-?}" "$(find "$corpus" -type f | wc -l)"
  if [ $rc -ne 0 ] || [ -z "$execs" ] || [ "$execs" = 0 ]; then
    echo "ci/fuzz.sh: $bin failed (exit $rc); the end of its log:" >&2
    tail -40 "$log" >&2
    local f
    for f in "$artifacts"/*; do
      [ -f "$f" ] || continue
      echo "ci/fuzz.sh: input $f (reproduce: $exe $f), hex:" >&2
      od -An -tx1 -v "$f" | head -64 >&2
    done
    return 1
  fi
}

ran=0
for crate in "${crates[@]}"; do
  bins=()
  for src in "$crate"/fuzz_targets/*.rs; do
    bin=$(basename "$src" .rs)
    wanted "$bin" && bins+=("$bin")
  done
  [ ${#bins[@]} -eq 0 ] && continue
  # Each fuzz crate is its own workspace; its lock file (ignored by git) is made from
  # the main workspace's each run, so the fuzzed code builds with the versions the
  # tests use and only libfuzzer-sys and its dependencies are resolved anew.
  cp Cargo.lock "$crate/Cargo.lock"
  echo "== fuzz build $crate (${bins[*]})"
  bin_args=()
  for bin in "${bins[@]}"; do bin_args+=(--bin "$bin"); done
  cargo build --quiet --release --manifest-path "$crate/Cargo.toml" --target "$triple" \
    --target-dir "$target_dir" "${bin_args[@]}"
  for bin in "${bins[@]}"; do
    fuzz_one "$bin" "$target_dir/$triple/release/$bin"
    ran=$((ran + 1))
  done
done
if [ $ran -eq 0 ]; then
  echo "ci/fuzz.sh: no fuzz target ran (asked for: ${only[*]:-all})" >&2
  exit 1
fi
