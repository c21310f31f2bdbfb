#!/usr/bin/env bash
# End-to-end check of replication over RDMA verbs (rdma-transport's `rdma` feature,
# docs/rdma.md) on Linux Soft-RoCE, in a QEMU/TCG guest booting Debian's own kernel.
#
# In the guest, with no network leaving it:
#  a. rdma_rxe on a guest-only dummy interface d0 (192.0.2.1/24; rdma_cm does not work over
#     127.0.0.1 on rxe), crc32_generic loaded first;
#  b. baseline: perftest's ib_send_lat and ib_write_lat over rdma_cm (RDMA-BASE lines,
#     reported only);
#  c. the transport's own device tests (rdma-transport/tests/rdma.rs): connect/accept,
#     fragmented 1 MiB frames, flow control with tiny rings, peer close, refused connect,
#     frame ping-pong latency and one-way throughput (RDMA-LAT / RDMA-BW lines), three
#     connections on one device sharing one protection domain and one registration of the
#     engine pools (RDMA-PD lines); a test
#     that prints SKIPPED fails the check (the device must be there); then the verbs
#     wrapper's one-sided operations the NVMe/RDMA target needs (rdma/rw_tests.rs: RDMA READ
#     / WRITE under a peer's rkey, WRITE-before-SEND order, an out-of-range access failing as
#     a completion error, a reject carrying NVMe/RDMA private data);
#  d. `baton chaos --rdma 192.0.2.1`: real processes, primary + two relays + standby, every
#     replication link over RDMA (primary -> relays, relays -> standby), ack policy all, a
#     self-checking writer over NVMe/TCP; each round kills one relay with SIGKILL under load,
#     restarts it, and passes once it caught up (acknowledges everything the primary
#     completed) and the standby applied a later restart point; after the last round the
#     cluster fails over and the promoted volume is read back and compared block by block
#     with the writer's record: nothing acknowledged may be lost (docs/chaos.md).
#  e. `baton perf` on a volume replicated to one `baton relay` over RDMA, and the
#     same over TCP to compare (RDMA-PERF lines, reported; a failed run fails the check);
#     the RDMA run's primary copied no write payload (RDMA-ZC-PERF line).
#  f. the NVMe/RDMA target (nvme/examples/nvmf_tgt built with `rdma`, docs/nvme-rdma.md)
#     with the kernel's nvme-rdma initiator over the same Soft-RoCE device: nvme discover
#     -t rdma (TRTYPE rdma in the log), connect, id-ctrl, fio randwrite 4 KiB and a 128 KiB
#     sequential write with crc32c verify, mkfs.ext4 / mount / write / drop caches / read
#     back / e2fsck, disconnect, a connect to a subsystem that does not admit the host
#     refused, the target still alive (NVMF-RDMA lines carry fio's figures); restart points
#     (0x81 by io-passthru, Flush, a deadline, a host leaving with one pending) and Compare
#     against nvmf_tgt's test sink, its RDMA counters by nvmf_get_stats; with baton in the
#     guest, restart points from the kernel host over RDMA into a replicated volume, applied
#     by a standby (ci/nvmf-rdma-guest.sh).
#  g. with baton in the guest, baton's NVMe/RDMA host: `baton perf -r 'trtype:RDMA …'
#     --verify` (randrw 4 KiB and 128 KiB) against nvmf_tgt and against the Linux kernel
#     target (nvmet-rdma, configfs), an unknown subsystem refused, the target killed
#     mid-I/O ending the run with errors, not a hang (ci/nvme-rdma-host-guest.sh).
# Prints "rdma e2e: N passed, M failed" and "E2E-DONE fail=M".
#
# Needs root (apt-get) the first time; downloads only Debian packages. ci/test.sh runs it.
# Knobs: E2E_WORK (work directory), RDMA_E2E_ROUNDS (chaos rounds, 2; 0 skips step d but
# still builds baton, for step f's replicated volume), RDMA_E2E_MEM (guest
# MiB, 2048), RDMA_E2E_SKIP_CHAOS=1 (transport tests only: no baton build, no step d),
# RDMA_E2E_TESTBIN / RDMA_E2E_LIBTESTBIN (already built device / unit test binaries, e.g. debug
# ones, for quick iterations),
# RDMA_E2E_STRACE=1 (run each device test under strace; a hung one shows its last calls),
# RDMA_E2E_SKIP_PERF=1 (no step e), RDMA_E2E_SKIP_NVMF=1 (no steps f and g).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${E2E_WORK:-/tmp/baton-rdma-e2e}
ROUNDS=${RDMA_E2E_ROUNDS:-2}
MEM=${RDMA_E2E_MEM:-2048}
SKIP_CHAOS=${RDMA_E2E_SKIP_CHAOS:-0}
SKIP_NVMF=${RDMA_E2E_SKIP_NVMF:-0}
mkdir -p "$WORK"
T0=$(date +%s)

# shellcheck source=ci/guest-lib.sh
. ci/guest-lib.sh
guest_packages "rdma e2e" qemu-system-x86 busybox-static kmod cpio iproute2 rdma-core ibverbs-providers \
  ibverbs-utils rdmacm-utils perftest libibverbs-dev librdmacm-dev libclang-dev pkg-config nvme-cli fio e2fsprogs
guest_kernel

# baton and the transport's device tests, for generic x86-64 (TCG has no AVX-512).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[ "$SKIP_CHAOS" = 1 ] || cargo build --release -q -p baton --features rdma
[ "$SKIP_NVMF" = 1 ] || cargo build --release -q -p baton-nvme --features rdma --example nvmf_tgt
TESTBIN=${RDMA_E2E_TESTBIN:-$(cargo test --release -q -p baton-rdma-transport --features rdma --test rdma --no-run \
  --message-format=json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)}
[ -x "$TESTBIN" ] || { echo "rdma e2e: test binary not found" >&2; exit 1; }
LIBTESTBIN=${RDMA_E2E_LIBTESTBIN:-$(cargo test --release -q -p baton-rdma-transport --features rdma --lib --no-run \
  --message-format=json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)}
[ -x "$LIBTESTBIN" ] || { echo "rdma e2e: unit test binary not found" >&2; exit 1; }

# Initramfs: busybox, bash, kmod, iproute2's ip and rdma, perftest, the verbs provider
# (dlopen'ed by libibverbs, so ldd does not see it), baton and the test binary.
guest_initrd_start
guest_bins bash modprobe ip rdma ib_send_lat ib_write_lat ibv_devices strace
if [ "$SKIP_NVMF" != 1 ]; then
  guest_bins nvme fio mkfs.ext4 e2fsck md5sum
  guest_file "$CARGO_TARGET_DIR/release/examples/nvmf_tgt" nvmf_tgt
  guest_modules nvme-rdma ext4 crc32c_generic nvmet nvmet-rdma
  mkdir -p "$IRD/etc/nvme"
  echo "nqn.2014-08.org.nvmexpress:uuid:baton-e2e-host" > "$IRD/etc/nvme/hostnqn"
  echo "7b3b3e6a-1f2d-4c55-9b8e-ba7000e2e001" > "$IRD/etc/nvme/hostid"
fi
[ "$SKIP_CHAOS" = 1 ] || guest_file "$CARGO_TARGET_DIR/release/baton" baton
guest_file "$TESTBIN" rdma-tests
guest_file "$LIBTESTBIN" rdma-unit-tests
mkdir -p "$IRD/etc/libibverbs.d" "$IRD/usr/lib/x86_64-linux-gnu/libibverbs"
cp /etc/libibverbs.d/rxe.driver "$IRD/etc/libibverbs.d/"
cp -L /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so "$IRD/usr/lib/x86_64-linux-gnu/libibverbs/"
guest_libs "$(ls /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so | head -1)"
guest_modules crc32_generic rdma_rxe ib_uverbs rdma_ucm dummy
printf 'ROUNDS=%d\nSKIP_CHAOS=%d\nSTRACE=%d\nSKIP_PERF=%d\nSKIP_NVMF=%d\n' "$ROUNDS" "$SKIP_CHAOS" "${RDMA_E2E_STRACE:-0}" \
  "${RDMA_E2E_SKIP_PERF:-0}" "$SKIP_NVMF" > "$IRD/etc/e2e.conf"

cat > "$IRD/init" <<'INIT'
#!/bin/bash
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/shm /dev/pts; mount -t tmpfs -o size=70% tmpfs /dev/shm
ip link set lo up
. /etc/e2e.conf
pass=0; fail=0
G0=$(cut -d. -f1 /proc/uptime)
phase() { echo "E2E phase $1 at $(( $(cut -d. -f1 /proc/uptime) - G0 )) s"; }
check() { local name=$1; shift; if "$@" > /tmp/out 2>&1; then pass=$((pass+1)); echo "E2E ok   $name"; else fail=$((fail+1)); echo "E2E FAIL $name"; head -20 /tmp/out; tail -30 /tmp/out; fi; }

# a. Soft-RoCE on a dummy interface.
phase rxe
modprobe crc32_generic
for m in rdma_rxe ib_uverbs rdma_ucm dummy; do modprobe "$m" || echo "E2E: modprobe $m failed"; done
ip link add d0 type dummy && ip addr add 192.0.2.1/24 dev d0 && ip link set d0 up
check rxe-link rdma link add rxe0 type rxe netdev d0
check rxe-device bash -c 'ls /sys/class/infiniband/ | grep -q rxe0 && ibv_devices'

# b. The kernel and provider's own figure, for comparison.
phase baseline
(ib_send_lat -R -n 2000 > /tmp/lat-srv.log 2>&1 &)
sleep 1
if ib_send_lat -R -n 2000 192.0.2.1 > /tmp/lat.log 2>&1; then
  awk '/^ *2 +2000/ {print "RDMA-BASE ib_send_lat 2 B typical " $5 " us, p99 " $8 " us"}' /tmp/lat.log
else
  echo "E2E info ib_send_lat did not run:"; tail -3 /tmp/lat.log
fi
(ib_write_lat -R -n 2000 > /tmp/wlat-srv.log 2>&1 &)
sleep 1
if ib_write_lat -R -n 2000 192.0.2.1 > /tmp/wlat.log 2>&1; then
  awk '/^ *2 +2000/ {print "RDMA-BASE ib_write_lat 2 B typical " $5 " us, p99 " $8 " us"}' /tmp/wlat.log
else
  echo "E2E info ib_write_lat did not run:"; tail -3 /tmp/wlat.log
fi

# c. The transport's device tests.
phase transport-tests
export BATON_RDMA_ADDR=192.0.2.1
# One test at a time, each bounded (a hung one shows where its threads wait), so a hang
# names its test.
one_test() {
  local t=$1 bin=${2:-rdma-tests} pid i
  if [ "$STRACE" = 1 ]; then
    strace -f -tt -o /tmp/strace.log "$bin" --exact "$t" --nocapture > /tmp/t1.log 2>&1 &
  else
    "$bin" --exact "$t" --nocapture > /tmp/t1.log 2>&1 &
  fi
  pid=$!
  for i in $(seq 240); do kill -0 $pid 2>/dev/null || break; sleep 0.5; done
  if kill -0 $pid 2>/dev/null; then
    echo "HUNG: $t"; for s in /proc/$pid/task/*; do echo "$s $(cat $s/wchan 2>/dev/null)"; cat $s/stack 2>/dev/null; done
    tail -25 /tmp/strace.log 2>/dev/null; kill -9 $pid; cat /tmp/t1.log; return 1
  fi
  wait $pid; local rc=$?
  cat /tmp/t1.log
  [ $rc = 0 ] && ! grep -q SKIPPED /tmp/t1.log
}
export -f one_test
export RUST_BACKTRACE=1
: > /tmp/t.log
for t in $(rdma-tests --list 2>/dev/null | sed -n 's/: test$//p'); do
  check "transport-$t" one_test "$t"
  cat /tmp/t1.log >> /tmp/t.log
done
for t in $(rdma-unit-tests --list rdma::rw_tests 2>/dev/null | sed -n 's/: test$//p'); do
  check "verbs-$t" one_test "$t" rdma-unit-tests
  cat /tmp/t1.log >> /tmp/t.log
done
grep -aE 'test result|RDMA frame|RDMA 64|RDMA zero-copy|RDMA-PD' /tmp/t.log | sed 's/^/E2E tests: /'
grep -a 'RDMA frame ping-pong' /tmp/t.log | sed 's/^/RDMA-LAT /'
grep -a 'RDMA 64 KiB' /tmp/t.log | sed 's/^/RDMA-BW /'
grep -a 'RDMA zero-copy' /tmp/t.log | sed 's/^/RDMA-ZC /'

# d. Replication over RDMA with real processes; relays killed and restarted under load.
phase chaos
if [ "$SKIP_CHAOS" != 1 ] && [ "$ROUNDS" != 0 ]; then
check chaos-relays-over-rdma bash -c "timeout -s KILL 2400 baton chaos --rdma 192.0.2.1 --roles relay1,relay2 --rounds $ROUNDS \
  --qd 8 --io-kib 16 --rp-every 32 --vol-mib 16 --journal-mib 128 --wait-secs 240 --keep > /tmp/chaos.log 2>&1; rc=\$?; cat /tmp/chaos.log; exit \$rc"
grep -aE 'round|verdict|pass|FAIL|lost|mismatch' /tmp/chaos.log | head -40 | sed 's/^/E2E chaos: /'
# The links really were RDMA: the relays' status names their rdma:// listeners and the
# primary's log its rdma:// relays.
check chaos-used-rdma bash -c 'find /dev/shm -name "*.log" | xargs grep -l "rdma://192.0.2.1" | head -3 | grep .'
if [ "$fail" != 0 ]; then
  find /dev/shm -name '*.log' | while read -r f; do echo "== $f"; tail -15 "$f"; done 2>/dev/null | sed 's/^/E2E log: /' | head -300
fi
fi

# e. baton perf on a volume replicated to a relay over RDMA, then over TCP (same guest); after
#    the chaos step, so nothing it leaves behind can disturb that step's timing.
phase perf
perf_via() {
  local name=$1 listen=$2 relay_addr=$3 i
  rm -rf "/dev/shm/perf-$name" && mkdir -p "/dev/shm/perf-$name"
  baton relay -m 0x2 -r "/tmp/relay-$name.sock" --listen "$listen" --journal-dir "/dev/shm/perf-$name" \
    --journal-bytes-max 256M --no-direct > "/tmp/relay-$name.log" 2>&1 &
  local rpid=$!
  for i in $(seq 100); do [ -S "/tmp/relay-$name.sock" ] && break; sleep 0.2; done
  timeout -s KILL 300 baton perf --bdev malloc,size=64M --replicate 1 --relays "$relay_addr" -w randwrite \
    -q 8 -o 4096 -t 5 --warmup 1 -m 0x1 -L > "/tmp/perf-$name.log" 2>&1
  local rc=$?
  kill "$rpid"; wait "$rpid" 2>/dev/null
  cat "/tmp/perf-$name.log" "/tmp/relay-$name.log"
  [ $rc = 0 ] && grep -q '^Total' "/tmp/perf-$name.log" && ! grep -q ERRORS "/tmp/perf-$name.log"
}
if [ "$SKIP_CHAOS" != 1 ] && [ "$SKIP_PERF" != 1 ]; then
  check perf-relay-over-rdma perf_via rdma rdma://192.0.2.1:4530 rdma://192.0.2.1:4530
  # Live writes leave the primary from the harness's pool buffers as RDMA scatter/gather
  # entries: no payload byte copied (docs/rdma.md, "Zero-copy sends").
  check perf-relay-over-rdma-zero-copy grep -qE '^relay [^ ]+: [1-9][0-9]* frames sent; write payload bytes copied 0, sent in place [1-9]' /tmp/perf-rdma.log
  grep '^relay ' /tmp/perf-rdma.log | sed 's/^/RDMA-ZC-PERF /'
  check perf-relay-over-tcp perf_via tcp 127.0.0.1:4531 127.0.0.1:4531
  for n in rdma tcp; do
    awk -v n=$n '/^Total/ {print "RDMA-PERF relay over " n ": randwrite 4 KiB QD 8: " $2 " IOPS, avg " $4 " us, p50 " $6 " us, p99 " $7 " us"}' "/tmp/perf-$n.log"
  done
fi

# f. The NVMe/RDMA target with the kernel's nvme-rdma initiator.
phase nvme-rdma
if [ "$SKIP_NVMF" != 1 ]; then
  . /etc/nvmf-rdma.sh
fi

# g. baton's NVMe/RDMA host against baton's target and the Linux kernel target.
phase nvme-rdma-host
if [ "$SKIP_NVMF" != 1 ] && command -v baton > /dev/null; then
  . /etc/nvme-rdma-host.sh
fi

phase end
echo "rdma e2e: $pass passed, $fail failed"
echo "E2E guest seconds: $(( $(cut -d. -f1 /proc/uptime) - G0 ))"
echo "E2E-DONE fail=$fail"
poweroff -f
INIT
cp ci/nvmf-rdma-guest.sh "$IRD/etc/nvmf-rdma.sh"
cp ci/nvme-rdma-host-guest.sh "$IRD/etc/nvme-rdma-host.sh"
guest_initrd_pack

guest_run 3000 "$MEM"
guest_verdict "rdma e2e" "^(E2E|RDMA|NVMF-RDMA)|rdma e2e|nvme nvme|nvme0"
