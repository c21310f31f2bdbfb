#!/usr/bin/env bash
# The network fault scenarios of tests/netem.rs (delay, loss, reordering with `tc netem`,
# partitions that heal) need a kernel with sch_netem, which the CI host lacks and cannot
# load. So this runs that test binary in a QEMU/TCG guest booting Debian's own kernel
# (TESTING.md; shared set-up in ci/guest-lib.sh): the test binary and `baton` sit at the
# same absolute paths as on the host (the binary names `baton` by its build path), with
# bash, ip, tc and the veth and sch_netem modules. The roles run in network namespaces
# inside the guest; nothing leaves it (-nic none).
#
# Prints the tests' own lines and libtest's summary ("netem guest: ok. N passed; M failed …");
# exits non-zero if any
# failed or the guest did not finish. BATON_NETEM_REQUIRED=1 in the guest makes a missing
# sch_netem a failure, not a skip. Needs root (apt-get) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${NETEM_WORK:-/tmp/baton-netem-guest}
mkdir -p "$WORK"
T0=$(date +%s)

# shellcheck source=ci/guest-lib.sh
. ci/guest-lib.sh
guest_packages "netem guest" qemu-system-x86 busybox-static kmod cpio iproute2
guest_kernel

# The test binary (and `baton`, which cargo builds for it).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TEST_BIN=$(cargo test --release -p baton --test netem --no-run 2>&1 | sed -n 's/.*Executable tests\/netem.rs (\(.*\))/\1/p' | tail -1)
BATON_BIN=$CARGO_TARGET_DIR/release/baton
if [ -z "$TEST_BIN" ] || [ ! -x "$TEST_BIN" ] || [ ! -x "$BATON_BIN" ]; then
  echo "netem guest: could not find the test binary ($TEST_BIN) or baton ($BATON_BIN)" >&2
  exit 1
fi
case "$TEST_BIN" in /*) ;; *) TEST_BIN=$ROOT/$TEST_BIN ;; esac

guest_initrd_start
guest_bins bash modprobe ip tc
for f in "$TEST_BIN" "$BATON_BIN"; do
  mkdir -p "$IRD$(dirname "$f")" && cp "$f" "$IRD$f"
  guest_libs "$f"
done
guest_modules veth sch_netem

cat > "$IRD/init" <<INIT
#!/bin/bash
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/shm /run/netns && mount -t tmpfs -o size=600m shm /dev/shm
ip link set lo up
for m in veth sch_netem; do modprobe "\$m" || echo "NETEM: modprobe \$m failed"; done
G0=\$(cut -d. -f1 /proc/uptime)
cd /tmp
BATON_NETEM_REQUIRED=1 RUST_BACKTRACE=1 "$TEST_BIN" --test-threads=1 --nocapture > /tmp/out 2>&1
rc=\$?
grep -E "^(test |netem|thread|split|  left|  right|.*panicked)" /tmp/out | sed 's/^/NETEM /'
grep -A12 panicked /tmp/out | head -60 | sed 's/^/NETEM | /'
echo "NETEM guest seconds: \$(( \$(cut -d. -f1 /proc/uptime) - G0 ))"
echo "NETEM-DONE rc=\$rc"
poweroff -f
INIT
guest_initrd_pack

guest_run 1500 2048
grep -a "^NETEM" "$LOG" | tr -d '\r' || true
# libtest's own summary (the per-test lines interleave with the tests' output).
summary=$(grep -a "^NETEM test result:" "$LOG" | tr -d '\r' | sed 's/^NETEM test result: //' || true)
echo "netem guest: ${summary:-no test result (the guest did not finish)}"
echo "netem guest: set-up and build $((T1 - T0)) s, QEMU guest $((T2 - T1)) s"
grep -aq "NETEM-DONE rc=0" "$LOG"
