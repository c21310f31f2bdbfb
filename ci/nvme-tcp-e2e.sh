#!/usr/bin/env bash
# End-to-end check of baton's NVMe/TCP target with an independent initiator: the Linux
# kernel's nvme-tcp, in a QEMU guest booting Debian's own kernel (TESTING.md).
#
# In the guest, on its loopback only: start nvme/examples/nvmf_tgt, then nvme discover,
# connect (without and with header+data digests), id-ctrl / id-ns / smart-log, fio with
# crc32c verify, mkfs.ext4 (Write Zeroes + Dataset Management), mount, write, drop caches,
# read back, e2fsck, disconnect; 1 MiB nvme read/write (MDTS) compared byte for byte; the
# target starved past KATO (SIGSTOP, then SIGCONT) while fio verify runs: the kernel
# reconnects (counted in its log) and fio finishes without an error; a restart of the
# target under a connected host (the kernel reconnects, I/O verifies again); and a connect
# to a subsystem whose allow list excludes the guest's host NQN, which must fail; ANA
# multipath: two paths of one subsystem moved by ANA state under fio verify, then a DR
# failover by ANA to a second target process while fio runs. Prints
# "nvme-tcp e2e: N passed, M failed" and the guest's run time.
#
# Needs root (apt-get) the first time; downloads only Debian packages. ci/test.sh runs it.
# Waits count events (device nodes, log lines, process exits) with generous limits, so a
# slow or loaded machine makes it slower, not red.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${E2E_WORK:-/tmp/baton-nvme-e2e}
mkdir -p "$WORK"
T0=$(date +%s)

# shellcheck source=ci/guest-lib.sh
. ci/guest-lib.sh
guest_packages "nvme-tcp e2e" qemu-system-x86 busybox-static kmod cpio nvme-cli fio e2fsprogs
guest_kernel

# The target, built for generic x86-64 (TCG has no AVX-512).
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo build --release -q -p baton-nvme --example nvmf_tgt
TGT=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/nvmf_tgt

# Initramfs: busybox, bash, kmod, the tools and their libraries, the needed modules.
guest_initrd_start
guest_bins bash modprobe nvme fio mkfs.ext4 e2fsck md5sum cmp
guest_file "$TGT" nvmf_tgt
guest_modules nvme-tcp ext4 crc32c_generic
echo "nqn.2014-08.org.nvmexpress:uuid:baton-e2e-host" > "$IRD/etc/nvme/hostnqn"
echo "7b3b3e6a-1f2d-4c55-9b8e-ba7000e2e001" > "$IRD/etc/nvme/hostid"

cat > "$IRD/init" <<'INIT'
#!/bin/bash
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /sys/kernel/config; mount -t configfs configfs /sys/kernel/config 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
for m in crc32c_generic nvme-tcp ext4; do modprobe "$m" || echo "E2E: modprobe $m failed"; done
pass=0; fail=0
G0=$(cut -d. -f1 /proc/uptime)
check() { local name=$1; shift; if "$@" > /tmp/out 2>&1; then pass=$((pass+1)); echo "E2E ok   $name"; else fail=$((fail+1)); echo "E2E FAIL $name"; head -5 /tmp/out; tail -8 /tmp/out; fi; }
NQN=nqn.2016-06.io.baton:e2e
nvmf_tgt 127.0.0.1:4420 128 > /tmp/tgt.log 2>&1 &
TGT_PID=$!
for i in $(seq 50); do grep -q ready /tmp/tgt.log && break; sleep 0.2; done
wait_dev() { for i in $(seq 100); do [ -b /dev/nvme0n1 ] && return 0; sleep 0.1; done; return 1; }
gone_dev() { for i in $(seq 100); do [ -b /dev/nvme0n1 ] || return 0; sleep 0.1; done; return 1; }
export -f wait_dev gone_dev
check discover bash -c "nvme discover -t tcp -a 127.0.0.1 -s 4420 | tee /dev/stderr | grep -q $NQN"
check restricted-refused bash -c "! nvme connect -t tcp -n nqn.2016-06.io.baton:restricted -a 127.0.0.1 -s 4420"
for digests in "" "--hdr-digest --data-digest"; do
  tag=${digests:+digests}; tag=${tag:-plain}
  check "connect-$tag" bash -c "nvme connect -t tcp -n $NQN -a 127.0.0.1 -s 4420 --ctrl-loss-tmo=15 --reconnect-delay=2 $digests && wait_dev"
  if [ ! -b /dev/nvme0n1 ]; then echo "E2E FAIL no-namespace-$tag"; fail=$((fail+1)); continue; fi
  check "id-ctrl-$tag" bash -c "nvme id-ctrl /dev/nvme0 | tee /dev/stderr | grep -q 'baton e2e'"
  check "id-ns-$tag" bash -c "nvme id-ns /dev/nvme0n1 | grep -q 'nsze *: 0x8000'"
  check "smart-log-$tag" nvme smart-log /dev/nvme0
  check "list-$tag" bash -c "nvme list | grep -q nvme0n1"
  check "fio-verify-$tag" fio --name=v --filename=/dev/nvme0n1 --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-256k --bs_unaligned=0 --size=48M --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1
  check "fio-seq-$tag" fio --name=s --filename=/dev/nvme0n1 --ioengine=psync --direct=1 --rw=write --bs=1M --size=16M --verify=crc32c --verify_fatal=1
  check "mkfs-$tag" mkfs.ext4 -F -E discard /dev/nvme0n1
  check "fs-roundtrip-$tag" bash -c "mount /dev/nvme0n1 /mnt && dd if=/dev/urandom of=/mnt/f bs=1M count=8 2>/dev/null && md5sum /mnt/f > /tmp/sum && umount /mnt && echo 3 > /proc/sys/vm/drop_caches && mount /dev/nvme0n1 /mnt && md5sum -c /tmp/sum && fstrim -v /mnt; umount /mnt"
  check "fsck-$tag" e2fsck -n -f /dev/nvme0n1
  check "disconnect-$tag" bash -c "nvme disconnect -n $NQN && gone_dev"
done
# MDTS: 1 MiB in one nvme-cli command each way, byte for byte; one block more is refused.
check connect-large bash -c "nvme connect -t tcp -n $NQN -a 127.0.0.1 -s 4420 --ctrl-loss-tmo=15 --reconnect-delay=2 && wait_dev"
check mdts-1mib bash -c "nvme id-ctrl /dev/nvme0 | grep -q '^mdts *: 8'"
check io-1mib bash -c "dd if=/dev/urandom of=/tmp/w1m bs=1M count=1 2>/dev/null && nvme write /dev/nvme0n1 --start-block=512 --block-count=255 --data-size=1048576 --data=/tmp/w1m && nvme read /dev/nvme0n1 --start-block=512 --block-count=255 --data-size=1048576 --data=/tmp/r1m && cmp /tmp/w1m /tmp/r1m"
check io-1mib-plus-1-refused bash -c "dd if=/dev/zero of=/tmp/w1m1 bs=4096 count=257 2>/dev/null; ! nvme write /dev/nvme0n1 --start-block=512 --block-count=256 --data-size=1052672 --data=/tmp/w1m1"
check disconnect-large bash -c "nvme disconnect -n $NQN && gone_dev"
# Starvation: the target is stopped past the host's KATO (and its own KATO + grace) while
# fio verify runs; after SIGCONT the host reconnects and fio verifies everything it wrote.
check connect-kato bash -c "nvme connect -t tcp -n $NQN -a 127.0.0.1 -s 4420 --keep-alive-tmo=5 --ctrl-loss-tmo=120 --reconnect-delay=1 && wait_dev"
kato_starved() {
  local before after fio_pid rc i
  before=$(dmesg | grep -c 'Successfully reconnected')
  fio --name=k --filename=/dev/nvme0n1 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k --size=128M --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 > /tmp/fio-kato.log 2>&1 &
  fio_pid=$!
  # Stop the target once fio has I/O going (its first completions show in the namespace's stats).
  for i in $(seq 300); do [ "$(cat /sys/block/nvme0*n1/stat 2>/dev/null | awk '{s += $5} END {print s + 0}')" -gt 256 ] && break; sleep 0.1; done
  kill -0 $fio_pid || { echo "fio ended before the stop"; cat /tmp/fio-kato.log; return 1; }
  kill -STOP $TGT_PID; echo "target stopped"
  sleep 15
  kill -CONT $TGT_PID; echo "target continued"
  # fio finishes (generous limit: TCG is slow), then the kernel must have reconnected.
  for i in $(seq 1800); do kill -0 $fio_pid 2>/dev/null || break; sleep 0.5; done
  if kill -0 $fio_pid 2>/dev/null; then kill $fio_pid; echo "fio still running after 15 min"; return 1; fi
  wait $fio_pid; rc=$?
  tail -20 /tmp/fio-kato.log
  after=$(dmesg | grep -c 'Successfully reconnected')
  echo "reconnects: $((after - before)), fio exit $rc"
  dmesg | grep -E 'nvme0|nvme nvme' | tail -12
  [ $rc = 0 ] && [ $((after - before)) -ge 1 ] && ! grep -Eq 'err= *[1-9]' /tmp/fio-kato.log
}
export -f kato_starved; export TGT_PID
check kato-starved-fio-verify kato_starved
grep -E "^(reconnects|target)" /tmp/out | sed 's/^/E2E      /'
check kato-after-id-ctrl nvme id-ctrl /dev/nvme0
check disconnect-kato bash -c "nvme disconnect -n $NQN && gone_dev"
check target-alive-after-stop kill -0 $TGT_PID
# Reconnect: the target restarts under a connected host; the kernel reconnects by itself.
check connect-reconnect bash -c "nvme connect -t tcp -n $NQN -a 127.0.0.1 -s 4420 --ctrl-loss-tmo=30 --reconnect-delay=1 && wait_dev"
kill $TGT_PID; wait $TGT_PID 2>/dev/null
mkfifo /tmp/ctl
nvmf_tgt 127.0.0.1:4420 128 --ana-listen 127.0.0.1:4421=inaccessible --cntlid 1-999 --ctl /tmp/ctl > /tmp/tgt2.log 2>&1 &
TGT_PID=$!
live() { for i in $(seq 150); do grep -q live /sys/class/nvme/nvme0/state 2>/dev/null && dd if=/dev/nvme0n1 of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null && return 0; sleep 0.2; done; return 1; }
export -f live
check reconnected live
check reconnected-io fio --name=r --filename=/dev/nvme0n1 --ioengine=io_uring --direct=1 --rw=randrw --bs=4k --size=8M --iodepth=8 --verify=crc32c --verify_fatal=1
check disconnect-reconnected bash -c "nvme disconnect -n $NQN && gone_dev"
check target-alive kill -0 $TGT_PID
# ANA multipath (docs/nvme-tcp.md, "ANA and multipath"). Subsystem $ANQN has ANA reporting;
# the kernel joins its controllers into one multipath head and picks paths by ANA state.
ANQN=nqn.2016-06.io.baton:ana
export ANQN
# The head block device of $ANQN, and the ANA state of the path through port $1.
ana_head() { local s; for s in /sys/class/nvme-subsystem/nvme-subsys*; do [ "$(cat "$s/subsysnqn" 2>/dev/null)" = "$ANQN" ] || continue; ls "$s" | grep -E '^nvme[0-9]+n1$' | head -1 && return 0; done; return 1; }
path_state() { local c; for c in /sys/class/nvme/nvme*; do grep -q "trsvcid=$1" "$c/address" 2>/dev/null && [ "$(cat "$c/subsysnqn")" = "$ANQN" ] && cat "$c"/nvme*c*n1/ana_state 2>/dev/null && return 0; done; echo none; }
# Waits until every PORT=STATE pair holds (the kernel reads the ANA log after the notice).
states() { local i p ok; for i in $(seq 150); do ok=1; for p in "$@"; do [ "$(path_state "${p%%=*}")" = "${p#*=}" ] || ok=0; done; [ $ok = 1 ] && return 0; sleep 0.2; done; for p in "$@"; do echo "port ${p%%=*}: $(path_state "${p%%=*}"), want ${p#*=}"; done; return 1; }
# fio on the head while $@ runs once fio has I/O going; fio must end without an error.
under_fio() { local dev fio_pid rc i verify=$1; shift; dev=/dev/$(ana_head)
  fio --name=a --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k --size=32M --iodepth=8 $verify > /tmp/fio-ana.log 2>&1 &
  fio_pid=$!
  for i in $(seq 300); do [ "$(awk '{print $5}' /sys/block/"${dev#/dev/}"/stat)" -gt 64 ] && break; sleep 0.1; done
  "$@"
  for i in $(seq 1800); do kill -0 $fio_pid 2>/dev/null || break; sleep 0.5; done
  wait $fio_pid; rc=$?
  tail -5 /tmp/fio-ana.log
  [ $rc = 0 ] && ! grep -Eq 'err= *[1-9]' /tmp/fio-ana.log; }
ctl() { echo "ana $2 $3" > "$1"; }
export -f ana_head path_state states under_fio ctl
check ana-connect-two-paths bash -c "nvme connect -t tcp -n $ANQN -a 127.0.0.1 -s 4420 --ctrl-loss-tmo=60 && nvme connect -t tcp -n $ANQN -a 127.0.0.1 -s 4421 --ctrl-loss-tmo=60 && for i in \$(seq 100); do ana_head && exit 0; sleep 0.1; done; exit 1"
check ana-one-head bash -c "[ \$(ls /sys/class/nvme-subsystem/*/ | grep -cE '^nvme[0-9]+n1\$') -ge 1 ] && nvme list-subsys | tee /dev/stderr | grep -q 4421"
check ana-initial-states states 4420=optimized 4421=inaccessible
check ana-move-under-fio-verify under_fio "--verify=crc32c --verify_fatal=1 --do_verify=1" bash -c "ctl /tmp/ctl 127.0.0.1:4421 optimized; ctl /tmp/ctl 127.0.0.1:4420 inaccessible"
check ana-moved-states states 4420=inaccessible 4421=optimized
check ana-io-on-the-other-path fio --name=o --filename=/dev/$(ana_head) --ioengine=io_uring --direct=1 --rw=randrw --bs=4k --size=8M --iodepth=8 --verify=crc32c --verify_fatal=1
check ana-back-under-fio-verify under_fio "--verify=crc32c --verify_fatal=1 --do_verify=1" bash -c "ctl /tmp/ctl 127.0.0.1:4420 optimized; ctl /tmp/ctl 127.0.0.1:4421 inaccessible"
check ana-back-states states 4420=optimized 4421=inaccessible
check ana-disconnect-4421 nvme disconnect -d "$(basename "$(grep -l trsvcid=4421 /sys/class/nvme/nvme*/address | head -1 | xargs dirname)")"
# DR failover by ANA: a second target process (the standby site's, controller IDs
# 1000-1999, its path inaccessible) exports the same subsystem and namespace identity.
# Under fio the primary's process is killed and the standby's path is made optimized: the
# host's I/O waits, then moves, without an application error. (The two processes do not
# replicate to each other here; data continuity across sites is what the replication and
# failover tests check. This checks the path mechanics a DR failover relies on.)
mkfifo /tmp/ctl2
nvmf_tgt 127.0.0.1:4422 64 --ana-state inaccessible --cntlid 1000-1999 --ctl /tmp/ctl2 > /tmp/tgt3.log 2>&1 &
SBY_PID=$!
for i in $(seq 50); do grep -q ready /tmp/tgt3.log && break; sleep 0.2; done
check ana-dr-standby-path bash -c "nvme connect -t tcp -n $ANQN -a 127.0.0.1 -s 4422 --ctrl-loss-tmo=60 && states 4420=optimized 4422=inaccessible"
export TGT_PID
check ana-dr-failover-under-fio under_fio "" bash -c "kill -9 $TGT_PID; ctl /tmp/ctl2 127.0.0.1:4422 optimized"
check ana-dr-promoted-state states 4422=optimized
check ana-dr-disconnect nvme disconnect -n $ANQN
echo "nvme-tcp e2e: $pass passed, $fail failed"
echo "E2E guest seconds: $(( $(cut -d. -f1 /proc/uptime) - G0 ))"
echo "E2E-DONE fail=$fail"
poweroff -f
INIT
guest_initrd_pack

guest_run 1800 1024
guest_verdict "nvme-tcp e2e" "^E2E|nvme-tcp e2e|nvme nvme|nvme0|reconnects:|target (stopped|continued)"
