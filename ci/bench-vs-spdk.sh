#!/usr/bin/env bash
# baton beside SPDK, measured in one run (docs/spdk.md):
#
#  A. Initiators on one target: `baton perf` on the `spdk-nvme` bdev (SPDK's NVMe driver
#     under baton's reactors) and SPDK's own bdevperf (bdev_nvme_attach_controller in
#     its JSON config), alternated workload by workload, against SPDK's nvmf_tgt and
#     then against `baton target`.
#  B. Targets under one initiator: SPDK's spdk_nvme_perf (core 1) against SPDK's
#     nvmf_tgt and against `baton target` (core 0), one target at a time, ROUNDS rounds,
#     with the baton/SPDK ratio of the round medians. BATON_BASE=path adds a third
#     target, another baton binary (e.g. the previous commit's), run in the same rounds.
#
# Every target serves a 64 MiB RAM bdev (4 KiB blocks) over NVMe/TCP on 127.0.0.1,
# set up with SPDK's scripts/rpc.py (baton's target speaks the same JSON-RPC).
# Workloads: 4 KiB randread/randwrite at QD 1, 32, 128 and 128 KiB sequential
# read/write at QD 32.
#
#   SPDK_DIR=/path/to/spdk ci/bench-vs-spdk.sh [seconds-per-run]     (ROUNDS=3, PARTS="A B")
#
# Skips (exit 0) with a message when SPDK is not found. Needs root for hugepages.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
ROUNDS=${ROUNDS:-3}
PARTS=${PARTS:-A B}
SPDK_DIR=${SPDK_DIR:-/var/tmp/spdk/src}
for f in build/bin/nvmf_tgt build/bin/spdk_nvme_perf build/examples/bdevperf scripts/rpc.py \
  build/lib/pkgconfig/spdk_nvme.pc; do
  if [ ! -e "$SPDK_DIR/$f" ]; then
    echo "bench-vs-spdk: SKIPPED: SPDK not found ($SPDK_DIR/$f is missing)."
    echo "  Build SPDK (docs/spdk.md) and run with SPDK_DIR=<its source tree>."
    exit 0
  fi
done

# Hugepages: SPDK's applications and baton's DPDK env both take their memory from them.
HP=/proc/sys/vm/nr_hugepages
if [ "$(cat $HP)" -lt 1024 ]; then
  echo 2048 > $HP || { echo "bench-vs-spdk: cannot reserve hugepages (run as root)"; exit 1; }
fi
mount | grep -q hugetlbfs || { mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages; }
echo "hugepages: $(grep HugePages_Free /proc/meminfo)"

export PKG_CONFIG_PATH=$SPDK_DIR/build/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
# SPDK's applications are linked to its shared libraries (baton links its archives).
export LD_LIBRARY_PATH=$SPDK_DIR/build/lib:$SPDK_DIR/isa-l/.libs:$SPDK_DIR/isa-l-crypto/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# BATON=path: use that binary (built with --features spdk) instead of building one.
if [ -z "${BATON:-}" ]; then
  cargo build --release -q --features spdk --bin baton
fi
B=${BATON:-$CARGO_TARGET_DIR/release/baton}
RPC=(python3 "$SPDK_DIR/scripts/rpc.py")
WORK=$(mktemp -d /tmp/baton-vs-spdk.XXXXXX)
SOCK=$WORK/tgt.sock
NQN=nqn.2016-06.io.spdk:cnode1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TRID="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"
TPID=
stop_target() {
  if [ -n "$TPID" ]; then kill -TERM "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; fi
  TPID=
  rm -f "$SOCK"
}
trap 'stop_target; rm -rf "$WORK"' EXIT

# start_target spdk|baton: core 0, 64 MiB RAM bdev of 4 KiB blocks, TCP listener.
start_target() {
  case $1 in
    spdk) "$SPDK_DIR/build/bin/nvmf_tgt" -m 0x1 -r "$SOCK" > "$WORK/tgt-$1.log" 2>&1 & ;;
    baton) "$B" target -m 0x1 --busy-poll -r "$SOCK" > "$WORK/tgt-$1.log" 2>&1 & ;;
    base) "$BATON_BASE" target -m 0x1 --busy-poll -r "$SOCK" > "$WORK/tgt-$1.log" 2>&1 & ;;
  esac
  TPID=$!
  for _ in $(seq 400); do [ -S "$SOCK" ] && break; sleep 0.05; done
  [ -S "$SOCK" ] || { echo "no RPC socket from the $1 target"; cat "$WORK/tgt-$1.log"; exit 1; }
  local r=("${RPC[@]}" -s "$SOCK" -t 30)
  "${r[@]}" nvmf_create_transport -t TCP > /dev/null
  "${r[@]}" bdev_malloc_create -b Malloc0 64 4096 > /dev/null
  "${r[@]}" nvmf_create_subsystem "$NQN" -a -s SPDK001 > /dev/null
  "${r[@]}" nvmf_subsystem_add_ns "$NQN" Malloc0 > /dev/null
  "${r[@]}" nvmf_subsystem_add_listener "$NQN" -t tcp -a 127.0.0.1 -s "$PORT" -f ipv4 > /dev/null
}

# name rw qd size
ROWS_A="randread:randread:1:4096 randread:randread:32:4096 randread:randread:128:4096
randwrite:randwrite:1:4096 randwrite:randwrite:32:4096 randwrite:randwrite:128:4096
seqread128k:read:32:131072 seqwrite128k:write:32:131072"

# baton_perf rw qd size -> "iops avg_us"
baton_perf() {
  local j=$WORK/bp.json
  "$B" perf --env dpdk --bdev "spdk-nvme:$TRID" -m 0x2 -q "$2" -o "$3" -w "$1" -t "$T" --warmup 1 --json \
    > "$j" 2> "$WORK/bp.log" || { echo "baton perf failed:"; tail -5 "$WORK/bp.log"; exit 1; }
  python3 -c "import json;t=json.load(open('$j'))['total'];assert t['errors']==0,t;print(round(t['iops']), round(t['latency_us']['avg'],2))"
}

# bdevperf rw qd size -> "iops avg_us"
bdevperf() {
  cat > "$WORK/bdevperf.json" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_nvme_attach_controller",
  "params": {"name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
             "trsvcid": "$PORT", "subnqn": "$NQN"}}]}]}
EOF
  "$SPDK_DIR/build/examples/bdevperf" -m 0x2 --json "$WORK/bdevperf.json" -q "$2" -o "$3" -w "$1" -t "$T" \
    > "$WORK/bdevperf.log" 2>&1 || { echo "bdevperf failed:"; tail -5 "$WORK/bdevperf.log"; exit 1; }
  # " Total : <blank> IOPS MiB/s Fail/s TO/s Average min max"
  tr '\r' '\n' < "$WORK/bdevperf.log" | awk '$1=="Total" {print int($3), $7}' | tail -1
}

# spdk_nvme_perf rw qd size -> "iops p50_us"
nvme_perf() {
  "$SPDK_DIR/build/bin/spdk_nvme_perf" -c 0x2 -q "$2" -o "$3" -w "$1" -t "$T" -L -r "$TRID" \
    > "$WORK/nvme_perf.log" 2>&1 || { echo "spdk_nvme_perf failed:"; tail -5 "$WORK/nvme_perf.log"; exit 1; }
  local iops p50
  iops=$(awk '$1=="Total" {print int($3)}' "$WORK/nvme_perf.log" | tail -1)
  p50=$(awk '/Summary latency data/ {s=1} s && $1=="50.00000%" {gsub("us","",$3); print $3; exit}' "$WORK/nvme_perf.log")
  echo "$iops ${p50:--}"
}

ratio() { python3 -c "a,b=float('$1'),float('$2');print(f'{a/b:.2f}' if b else '-')"; }
median() { python3 -c "import sys,statistics;print(round(statistics.median(float(x) for x in sys.argv[1:]),2))" "$@"; }

if [[ " $PARTS " == *" A "* ]]; then
  echo
  echo "== A: initiators on one target: baton perf (spdk-nvme bdev) vs SPDK bdevperf, core 1, ${T}s each"
  for tgt in spdk baton; do
    start_target $tgt
    printf "%-8s %-13s %5s %10s %8s %10s %8s %7s\n" target workload qd baton_IOPS avg_us bdevperf avg_us ratio
    for row in $ROWS_A; do
      IFS=: read -r name rw qd size <<< "$row"
      a=(); b=(); al=(); bl=()
      for _ in $(seq "$ROUNDS"); do
        read -r i l < <(baton_perf "$rw" "$qd" "$size"); a+=("$i"); al+=("$l")
        read -r i l < <(bdevperf "$rw" "$qd" "$size"); b+=("$i"); bl+=("$l")
      done
      ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
      printf "%-8s %-13s %5s %10.0f %8s %10.0f %8s %7s   (rounds: %s | %s)\n" $tgt "$name" "$qd" "$ma" \
        "$(median "${al[@]}")" "$mb" "$(median "${bl[@]}")" "$(ratio "$ma" "$mb")" "${a[*]}" "${b[*]}"
      al=(); bl=()
    done
    stop_target
  done
fi

if [[ " $PARTS " == *" B "* ]]; then
  echo
  echo "== B: targets under one initiator: spdk_nvme_perf (core 1) -> nvmf_tgt / baton target (core 0), ${T}s each"
  ROWS_B=${ROWS_B:-"randread-qd1-p50:randread:1:4096 randread:randread:32:4096 randread:randread:128:4096
randwrite:randwrite:32:4096 randwrite:randwrite:128:4096 seqread128k:read:32:131072
seqwrite128k:write:32:131072"}
  declare -A R
  TGTS="spdk baton"; [ -n "${BATON_BASE:-}" ] && TGTS="spdk baton base"
  for round in $(seq "$ROUNDS"); do
    for tgt in $TGTS; do
      start_target $tgt
      for row in $ROWS_B; do
        IFS=: read -r name rw qd size <<< "$row"
        read -r i p < <(nvme_perf "$rw" "$qd" "$size")
        R[$tgt,$name,$qd,$round]="$i $p"
      done
      stop_target
    done
  done
  printf "%-18s %5s %-24s %-24s %7s" row qd "nvmf_tgt (per round)" "baton target (per round)" "baton/SPDK"
  [ -n "${BATON_BASE:-}" ] && printf " %-24s %9s" "base (per round)" "baton/base"
  echo
  pick() { read -r i p <<< "${R[$1,$name,$qd,$2]}"; if [ "$name" = randread-qd1-p50 ]; then echo "$p"; else echo "$i"; fi; }
  for row in $ROWS_B; do
    IFS=: read -r name rw qd size <<< "$row"
    s=(); t=(); u=()
    for round in $(seq "$ROUNDS"); do
      s+=("$(pick spdk "$round")"); t+=("$(pick baton "$round")")
      [ -n "${BATON_BASE:-}" ] && u+=("$(pick base "$round")")
    done
    ms=$(median "${s[@]}"); mt=$(median "${t[@]}")
    unit=IOPS; [ "$name" = randread-qd1-p50 ] && unit="p50 us"
    printf "%-18s %5s %-24s %-24s %7s" "$name" "$qd" "${s[*]}" "${t[*]}" "$(ratio "$mt" "$ms")"
    [ -n "${BATON_BASE:-}" ] && printf " %-24s %9s" "${u[*]}" "$(ratio "$mt" "$(median "${u[@]}")")"
    echo "  ($unit)"
  done
fi
