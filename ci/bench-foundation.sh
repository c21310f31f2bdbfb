#!/usr/bin/env bash
# Foundation benchmark: 4 KiB random read and write at QD 1, 32
# and 128 on malloc, null and uring (a file on /dev/shm and one on the root
# file system), one reactor pinned to core 0, and side by side in the same
# run the references: fio io_uring on the same files and core, and a 4 KiB
# memcpy rate. Prints a table; JSON of every run goes to $OUT (default
# target/bench-foundation).
#
#   ci/bench-foundation.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
OUT=${OUT:-target/bench-foundation}
mkdir -p "$OUT"
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio; }
# Hugepages for the buffer pools and the malloc bdev, as SPDK's setup.sh reserves them
# (HUGEPAGES=0 to measure on 4 KiB pages); given back at exit.
HP=/proc/sys/vm/nr_hugepages
HP_BEFORE=$(cat $HP)
HUGEPAGES=${HUGEPAGES:-1100}
if [ -w $HP ]; then echo "$HUGEPAGES" > $HP 2>/dev/null || true; fi
echo "nr_hugepages: $(cat $HP) (was $HP_BEFORE)"
cargo build --release -q
B=target/release/baton
SHM=/dev/shm/baton-bench.img
ROOTF=/var/tmp/baton-bench.img
truncate -s 1G "$SHM"; truncate -s 1G "$ROOTF"
# Fill the root-fs file so reads hit real blocks, not holes.
[ "$(du -k "$ROOTF" | cut -f1)" -ge 1000000 ] || dd if=/dev/zero of="$ROOTF" bs=1M count=1024 oflag=direct status=none
dd if=/dev/zero of="$SHM" bs=1M count=1024 status=none
trap 'rm -f "$SHM"; echo "$HP_BEFORE" > $HP 2>/dev/null || true' EXIT

printf "%-14s %-10s %4s %12s %9s %9s %9s %10s %12s %7s\n" bdev op qd IOPS p50us p99us p99.9us maxus fio_IOPS ratio
for spec in "null,size=1G" "malloc,size=1G" "uring:$SHM" "uring:$ROOTF"; do
  for op in randread randwrite; do
    for qd in 1 32 128; do
      name=$(echo "$spec" | tr ':/,=' '____')
      j="$OUT/$name-$op-qd$qd.json"
      $B perf --bdev "$spec" -q $qd -o 4096 -w $op -t "$T" --warmup 1 -m 0x1 --json > "$j"
      read -r iops p50 p99 p999 max < <(python3 -c "import json,sys;t=json.load(open('$j'))['total'];l=t['latency_us'];print(round(t['iops']),l['p50'],l['p99'],l['p99_9'],l['max'])")
      fio_iops="-"; ratio="-"
      case "$spec" in uring:*)
        f=${spec#uring:}
        direct=1; [ "$f" = "$SHM" ] && direct=0
        fio_iops=$(taskset -c 0 fio --name=ref --filename="$f" --ioengine=io_uring --direct=$direct --rw=$op --bs=4k \
          --iodepth=$qd --runtime="$T" --ramp_time=1 --time_based --fixedbufs=1 --registerfiles=1 --hipri=0 \
          --output-format=json 2>/dev/null | python3 -c "import json,sys;j=json.load(sys.stdin)['jobs'][0];print(round(j['read']['iops']+j['write']['iops']))")
        ratio=$(python3 -c "print(f'{$iops/$fio_iops:.2f}')")
      esac
      printf "%-14s %-10s %4s %12s %9.2f %9.2f %9.2f %10.1f %12s %7s\n" "${spec%%,*}" $op $qd "$iops" "$p50" "$p99" "$p999" "$max" "$fio_iops" "$ratio"
    done
  done
done

echo "references measured in this run:"
$B limits
