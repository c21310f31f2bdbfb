#!/usr/bin/env bash
# Replication figures with `baton perf`: 4 KiB randwrite at QD1 and QD32 on a
# RAM bdev, unreplicated and replicated over 1, 2 and 3 in-process relays on loopback TCP,
# journals on /dev/shm (tmpfs) and /var/tmp (the root file system, O_DIRECT), ack policy all.
#
# Pinning: the harness's worker and the volume's link reactor on core $HARNESS_CORE (default
# 1), the relays on core $RELAY_CORE (default 0). Each run measures $T s after $WARM s of
# warm-up (defaults 3 and 0.5): the whole script takes about four minutes.
#
# Journals are preallocated before each run ($PREALLOC_SHM, $PREALLOC_TMP bytes per relay;
# `baton perf --journal-preallocate`), so a run measures relays whose journals write into
# allocated pages and blocks, as a relay in service does once it reuses released segments.
# On this VM every first touch of a guest page faults in the hypervisor (free page
# reporting), which held a journal growing into new tmpfs pages to ~300 MB/s; the rows
# marked "cold" are the same runs without preallocation, for comparison.
#
# Prints a Markdown table; ratios are against the unreplicated run at the same QD, and
# "QD1 p50 / (2 x plain + RTT)" compares a replicated QD1 write with two local writes plus
# one loopback TCP round trip of a 4 KiB message (`baton limits`, perf::limits::tcp_rtt_us).
#
#   ci/bench-replication.sh [path/to/baton]
set -euo pipefail
cd "$(dirname "$0")/.."
BATON=${1:-${CARGO_TARGET_DIR:-target}/release/baton}
if [ ! -x "$BATON" ]; then
  cargo build --release -q -p baton
fi
T=${T:-3}
# Runs per configuration: this VM's runs are bimodal from minute to minute, so RUNS=3
# reports the median run (IOPS) of each and prints every run's IOPS beside it.
RUNS=${RUNS:-1}
# Journal file systems measured (FS="/dev/shm" for the memory rows only).
FS=${FS:-/dev/shm /var/tmp}
WARM=${WARM:-0.5}
HARNESS_CORE=${HARNESS_CORE:-1}
RELAY_CORE=${RELAY_CORE:-0}
BDEV=${BDEV:-malloc,size=1G,bs=4096}
# Enough for a run's appends at the rates seen here (QD 32: up to ~200 K x 4.2 KB x 3.5 s);
# the "new segs" column says when a run outgrew it anyway (journal writes into new memory
# from then on, ~10x slower per page on this VM).
PREALLOC_SHM=${PREALLOC_SHM:-2G}
export PREALLOC_SHM_QD1=${PREALLOC_SHM_QD1:-1G}
PREALLOC_TMP=${PREALLOC_TMP:-1G}
OUT=$(mktemp -d)
export BATON_LOG=${BATON_LOG:-warn}
# Hugepages for the buffer pools and the RAM bdev, as SPDK's setup.sh reserves them
# (HUGEPAGES=0 to measure on 4 KiB pages); given back at exit. On 4 KiB pages the
# random writes into the 1 GiB RAM bdev cost the primary's core TLB misses: one relay at
# QD 32 went from 64 K to 122 K IOPS with them.
HP=/proc/sys/vm/nr_hugepages
HP_BEFORE=$(cat $HP)
HUGEPAGES=${HUGEPAGES:-1100}
if [ -w $HP ]; then echo "$HUGEPAGES" > $HP 2>/dev/null || true; fi
trap 'rm -rf "$OUT"; echo "$HP_BEFORE" > $HP 2>/dev/null || true' EXIT

hmask=$(printf '0x%x' $((1 << HARNESS_CORE)))
rmask=$(printf '0x%x' $((1 << RELAY_CORE)))
RTT=$("$BATON" limits | awk '/loopback TCP round trip.* 4096 B/ {print $(NF-1)}')

run() { # name qd extra-args...  ($RUNS times; the table takes the run of median IOPS)
  local name=$1 qd=$2 k
  shift 2
  for k in $(seq 1 "$RUNS"); do
    "$BATON" perf --bdev "$BDEV" -w randwrite -o 4096 -q "$qd" -t "$T" --warmup "$WARM" \
      -m "$hmask" --relay-cpumask "$rmask" --json "$@" >"$OUT/$name-qd$qd.$k.json"
  done
}

for qd in 1 32; do
  run plain "$qd"
  for fs in $FS; do
    tag=$(basename "$fs")
    pre=$PREALLOC_SHM
    [ "$qd" = 1 ] && pre=$PREALLOC_SHM_QD1
    [ "$tag" = tmp ] && pre=$PREALLOC_TMP
    for n in 1 2 3; do
      d="$fs/baton-bench-repl-$$"
      mkdir -p "$d"
      run "$tag-r$n" "$qd" --replicate "$n" --journal-dir "$d" --journal-preallocate "$pre"
      rm -rf "$d"
    done
  done
  d="/dev/shm/baton-bench-repl-$$"
  mkdir -p "$d"
  run "shm-cold-r2" "$qd" --replicate 2 --journal-dir "$d"
  rm -rf "$d"
done

# The replication wire limit on the same cores, in the same run: baton's own transport
# fanning each 4 KiB write out to N receivers that store it in RAM and ack as relays do.
"$BATON" limits --wire-only --outstanding 32 --time "$T" \
  --sender-core "$HARNESS_CORE" --receiver-core "$RELAY_CORE" >"$OUT/limits.txt"

echo "nr_hugepages: $(cat $HP) (was $HP_BEFORE)"
python3 - "$OUT" "$RTT" "$BDEV" "$T" "$PREALLOC_SHM" "$PREALLOC_TMP" <<'PY'
import json, sys, os
out, rtt, bdev, t, pre_shm, pre_tmp = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
import glob
def runs(name, qd):
    tots = []
    for f in sorted(glob.glob(os.path.join(out, f"{name}-qd{qd}.*.json"))):
        tot = json.load(open(f))["total"]
        assert tot["errors"] == 0, f
        tots.append(tot)
    return sorted(tots, key=lambda t: t["iops"])
def get(name, qd):
    tot = runs(name, qd)[len(runs(name, qd)) // 2]
    return tot["iops"], tot["latency_us"]["p50"], tot["latency_us"]["p99"]
def new_segs(name, qd):
    # Most segments any in-process relay started in a new file, over the runs.
    most = 0
    for f in glob.glob(os.path.join(out, f"{name}-qd{qd}.*.json")):
        rep = json.load(open(f)).get("target", {}).get("replication", {})
        for r in rep.get("in_process_relays", []):
            for v in r.get("volumes", []):
                most = max(most, v.get("segments_created", 0))
    return most
def spread(name, qd):
    r = runs(name, qd)
    return "" if len(r) < 2 else " / ".join(f"{t['iops'] / 1000:.0f}K" for t in r)
print(f"base {bdev}, 4 KiB randwrite, {t} s per run, ack all; loopback RTT (4 KiB, p50) {rtt:.2f} us")
print(f"journals preallocated per relay: /dev/shm {pre_shm} (QD 1: {os.environ.get('PREALLOC_SHM_QD1', '1G')}), /var/tmp {pre_tmp} (cold: none)\n")
print("| journal | relays | QD | IOPS | p50 us | p99 us | IOPS / plain | p50 / plain | QD1 p50 / (2 x plain + RTT) | runs (IOPS) | new segs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
for qd in (1, 32):
    pi, pp50, pp99 = get("plain", qd)
    print(f"| none | 0 | {qd} | {pi:.0f} | {pp50:.2f} | {pp99:.2f} | 1.00 | 1.00 | | {spread('plain', qd)} | |")
rows = [("shm", n) for n in (1, 2, 3)] + [("shm-cold", 2)] + [("tmp", n) for n in (1, 2, 3)]
for fs, n in rows:
    if not runs(f"{fs}-r{n}", 1):
        continue
    for qd in (1, 32):
        pi, pp50, _ = get("plain", qd)
        i, p50, p99 = get(f"{fs}-r{n}", qd)
        bound = f"{p50 / (2 * pp50 + rtt):.2f}" if qd == 1 else ""
        where = {"shm": "/dev/shm", "shm-cold": "/dev/shm (cold)", "tmp": "/var/tmp"}[fs]
        print(f"| {where} | {n} | {qd} | {i:.0f} | {p50:.2f} | {p99:.2f} | {i / pi:.3f} | {p50 / pp50:.1f} | {bound} | {spread(f'{fs}-r{n}', qd)} | {new_segs(f'{fs}-r{n}', qd)} |")
i2, _, _ = get("shm-r2", 32)
pi, _, _ = get("plain", 32)
print(f"\nQD32, 2 relays (/dev/shm) vs unreplicated: {i2 / pi:.3f} of the IOPS")
import re
limits = {}
for line in open(os.path.join(out, "limits.txt")):
    m = re.search(r"(\d) receiver\(s\): (\d+) writes/s at 32 outstanding; QD1 p50 ([0-9.]+) us", line)
    if m:
        limits[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
print("\nAgainst the replication wire limit (`baton limits --wire-only`, same cores, same run):\n")
print("| relays | limit QD32 writes/s | replicated QD32 IOPS (/dev/shm) | replicated / limit | limit QD1 p50 us | replicated QD1 p50 us | bound: limit + 2 x plain + 2 us |")
print("|---:|---:|---:|---:|---:|---:|---:|")
_, pp50_1, _ = get("plain", 1)
for n in (1, 2, 3):
    if n not in limits or not runs(f"shm-r{n}", 32):
        continue
    lw, lp50 = limits[n]
    i, _, _ = get(f"shm-r{n}", 32)
    _, p50, _ = get(f"shm-r{n}", 1)
    bound = lp50 + 2 * pp50_1 + 2
    print(f"| {n} | {lw:.0f} | {i:.0f} | {i / lw:.2f} | {lp50:.2f} | {p50:.2f} | {bound:.2f} ({'within' if p50 <= bound else 'over'}) |")
PY
