#!/usr/bin/env bash
# Idle cost and wake-up latency of baton's roles (docs/perf.md, "Idle"):
# 1. CPU used in 10 s by an idle `baton target` (NVMe/TCP listener, no host), and by an
#    idle standby, two relays and a primary with a volume replicated to them;
# 2. `baton perf -q 1 --think-us 1000000` (every I/O after a second of idleness) against a
#    default (sleeping) target and a `--busy-poll` one, alternated, two rounds; and the
#    same against SPDK's nvmf_tgt with and without --interrupt-mode when SPDK_DIR names
#    an SPDK build tree (docs/spdk.md). Run both halves under `nice -n -20` on a shared
#    machine: compilers on the same two cores otherwise decide the figures.
# Usage: ci/bench-idle.sh [BATON_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-target/release/baton}
[ -x "$B" ] || cargo build --release -q
W=$(mktemp -d /tmp/bench-idle.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
NQN=nqn.2016-06.io.spdk:cnode1

# start_target SOCK PORT [EXTRA...]: a target exporting a 64 MiB RAM bdev on 127.0.0.1:PORT.
start_target() {
  local s=$1 port=$2
  shift 2
  "$B" target -r "$s" --bdev m0=malloc,size=64M "$@" >"$W/target-$port.log" 2>&1 &
  TP=$!
  for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
  local r=("$B" rpc -s "$s")
  "${r[@]}" nvmf_create_transport --trtype TCP >/dev/null
  "${r[@]}" nvmf_create_subsystem --nqn $NQN --allow_any_host true >/dev/null
  "${r[@]}" nvmf_subsystem_add_ns --nqn $NQN --namespace '{"bdev_name":"m0"}' >/dev/null
  "${r[@]}" nvmf_subsystem_add_listener --nqn $NQN \
    --listen_address "{\"trtype\":\"TCP\",\"adrfam\":\"IPv4\",\"traddr\":\"127.0.0.1\",\"trsvcid\":\"$port\"}" >/dev/null
}

echo "== idle CPU, 10 s (ticks of 10 ms; 10 ticks = 1 % of a core)"
start_target "$W/t.sock" 4471
sleep 2
a=$(ticks $TP); sleep 10; echo "target: $(($(ticks $TP) - a))"
kill $TP; wait $TP 2>/dev/null || true

mkdir -p "$W/r1" "$W/r2"
"$B" standby -r "$W/sb.sock" --listen 127.0.0.1:4672 --bdev vol=malloc,size=64M --bdev stg=malloc,size=64M >"$W/sb.log" 2>&1 &
SB=$!
sleep 1
"$B" rpc -s "$W/sb.sock" standby_create --name v0 --mode delayed --volume_bdev vol --staging_bdev stg --format true >/dev/null
"$B" relay -r "$W/r1.sock" --listen 127.0.0.1:4573 --journal-dir "$W/r1" --standby 127.0.0.1:4672 --no-direct >"$W/r1.log" 2>&1 &
R1=$!
"$B" relay -r "$W/r2.sock" --listen 127.0.0.1:4574 --journal-dir "$W/r2" --standby 127.0.0.1:4672 --no-direct >"$W/r2.log" 2>&1 &
R2=$!
"$B" target -r "$W/p.sock" --bdev base=malloc,size=64M >"$W/p.log" 2>&1 &
P=$!
sleep 1
"$B" rpc -s "$W/p.sock" replication_create_volume --name v0 --base_bdev base \
  --relays '["127.0.0.1:4573","127.0.0.1:4574"]' >/dev/null
sleep 3
declare -A t0
for n in SB R1 R2 P; do t0[$n]=$(ticks ${!n}); done
sleep 10
for n in SB R1 R2 P; do echo "$n: $(($(ticks ${!n}) - ${t0[$n]}))"; done
kill $P $R1 $R2 $SB; wait 2>/dev/null || true

TRID="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:PORT subnqn:$NQN"
first_io() { # PORT: the Total line of 10 I/Os, each after 1 s idle
  "$B" perf -r "${TRID/PORT/$1}" -q 1 -w randread -t 10 --warmup 1 -m 0x2 --think-us 1000000 -L 2>/dev/null | grep -E "^Total" | awk "{print \"p50\", \$6, \"µs  max\", \$8}"
}
echo "== first I/O after 1 s idle, 10 I/Os per run (µs)"
for round in 1 2; do
  for mode in sleep busy; do
    extra=()
    [ $mode = busy ] && extra=(--busy-poll)
    start_target "$W/w.sock" 4475 "${extra[@]}"
    echo "baton $mode, round $round: $(first_io 4475)"
    kill $TP; wait $TP 2>/dev/null || true
    rm -f "$W/w.sock"
  done
done
if [ -n "${SPDK_DIR:-}" ] && [ -x "$SPDK_DIR/build/bin/nvmf_tgt" ]; then
  export LD_LIBRARY_PATH=$SPDK_DIR/build/lib:$SPDK_DIR/isa-l/.libs:$SPDK_DIR/isa-l-crypto/.libs
  for round in 1 2; do
    for mode in intr busy; do
      extra=()
      [ $mode = intr ] && extra=(--interrupt-mode)
      "$SPDK_DIR/build/bin/nvmf_tgt" -m 0x1 -r "$W/spdk.sock" "${extra[@]}" >"$W/spdk.log" 2>&1 &
      TP=$!
      for _ in $(seq 100); do [ -S "$W/spdk.sock" ] && break; sleep 0.1; done
      R=(python3 "$SPDK_DIR/scripts/rpc.py" -s "$W/spdk.sock")
      "${R[@]}" nvmf_create_transport -t TCP >/dev/null
      "${R[@]}" bdev_malloc_create -b Malloc0 64 4096 >/dev/null
      "${R[@]}" nvmf_create_subsystem $NQN -a -s SPDK001 >/dev/null
      "${R[@]}" nvmf_subsystem_add_ns $NQN Malloc0 >/dev/null
      "${R[@]}" nvmf_subsystem_add_listener $NQN -t tcp -a 127.0.0.1 -s 4476 >/dev/null
      echo "SPDK $mode, round $round: $(first_io 4476)"
      kill $TP; wait $TP 2>/dev/null || true
      rm -f "$W/spdk.sock"
    done
  done
else
  echo "(SPDK rows skipped: set SPDK_DIR to an SPDK build tree, docs/spdk.md)"
fi
