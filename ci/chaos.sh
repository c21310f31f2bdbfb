#!/usr/bin/env bash
# A long chaos run on demand (ci/test.sh runs the short ones in tests/chaos.rs):
#
#   ROUNDS=100 SEED=12345 ci/chaos.sh            # every role, random moments
#   ROUNDS=20 LAG=1 ci/chaos.sh                  # primary kills with a standby far behind
#   ROUNDS=40 ci/chaos.sh --mode snapshot        # extra arguments go to `baton chaos`
#
# Prints the seed first; the same SEED (and arguments) replays the same choices. Exits
# non-zero when a round found a problem, keeping the run directory (logs, journals,
# volumes, the writer's record) for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin baton
bin="${CARGO_TARGET_DIR:-target}/release/baton"
args=(--rounds "${ROUNDS:-100}")
if [ -n "${SEED:-}" ]; then args+=(--seed "$SEED"); fi
if [ "${LAG:-0}" = 1 ]; then
  # The forwarder capped at 4 MB/s, up to 1000 writes of 64 KiB before each kill, right
  # after a restart point was acknowledged, and a short detection timeout.
  args+=(--roles primary --kill-at after-point --forward bandwidth:4000000 --round-writes 1000 --timeout-ms 400)
fi
exec "$bin" chaos "${args[@]}" "$@"
