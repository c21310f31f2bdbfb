#!/usr/bin/env bash
# End-to-end check of baton's user-space NVMe driver over VFIO (nvme/src/pcie/, cargo
# feature `vfio`) against QEMU's emulated NVMe controller, in a QEMU/TCG guest booting
# Debian's own kernel behind QEMU's emulated Intel IOMMU (docs/nvme-tcp.md, "The PCIe
# guest test").
#
# In the guest, on its loopback only:
#  a. baseline: the kernel's nvme driver owns the controller; fio 4 KiB randread with
#     io_uring, O_DIRECT, at QD 1 and QD 32 for a fixed time (PCIE-BASE lines);
#  b. the controller is unbound from nvme and bound to vfio-pci (driver_override), its
#     IOMMU group is viable, /dev/vfio/GROUP exists, interrupt remapping is on, and
#     ci/vfio-probe.c (a known-good VFIO user) opens the container, group and device, maps
#     DMA and reads the controller's CAP and VS, so a failure below is the driver's;
#  c. `pcie_check BDF`: the driver's own checks (PCIE ok/FAIL lines), one check here;
#  d. `pcie_check BDF --bench qd1|qd32 SECONDS`: PCIE-VFIO lines and the vfio/kernel ratio;
#  e. `nvmf_tgt 127.0.0.1:4420 64 --pcie BDF` exports the controller's namespace over
#     NVMe/TCP as nqn.2016-06.io.baton:pcie; the kernel's nvme-tcp connects; fio crc32c
#     verify, mkfs.ext4, mount/write/drop caches/read back, e2fsck, disconnect;
#  f. the controller goes back to the kernel's nvme driver, which reads the file system
#     baton wrote (md5 and e2fsck), so what baton's driver wrote is on the medium.
# Prints "nvme-pcie e2e: N passed, M failed", "E2E-DONE fail=M" and the run times.
#
# While the driver's branch is not merged, nvme/examples/pcie_check.rs is a placeholder
# that prints "PCIE ok placeholder": the guest then says so, accepts an IOPS of 0 and runs
# step e against nvmf_tgt's RAM subsystem (nqn.2016-06.io.baton:e2e) instead, so the
# plumbing is exercised; step f then only checks that the kernel takes the controller back.
#
# Needs root (apt-get) the first time; downloads only Debian packages. ci/test.sh runs it.
# Waits count events (device nodes, log lines, process exits) with generous limits, so a
# slow or loaded machine makes it slower, not red; the IOPS figures are reported, never
# asserted. Knobs: E2E_WORK (work directory), PCIE_E2E_SECONDS (per fio/bench run, 10),
# PCIE_E2E_HUGEPAGES (2 MiB pages reserved in the guest before the VFIO steps, 64),
# PCIE_E2E_MACHINE and PCIE_E2E_IOMMU (QEMU's -machine and IOMMU -device, for experiments).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${E2E_WORK:-/tmp/baton-pcie-e2e}
SECONDS_PER_RUN=${PCIE_E2E_SECONDS:-10}
HUGEPAGES=${PCIE_E2E_HUGEPAGES:-64}
MACHINE=${PCIE_E2E_MACHINE:-q35,accel=tcg,kernel-irqchip=split}
IOMMU=${PCIE_E2E_IOMMU:-intel-iommu,intremap=on,caching-mode=on}
mkdir -p "$WORK"
T0=$(date +%s)

# shellcheck source=ci/guest-lib.sh
. ci/guest-lib.sh
guest_packages "nvme-pcie e2e" qemu-system-x86 busybox-static kmod cpio nvme-cli fio e2fsprogs pciutils strace gcc libc6-dev
guest_kernel

# The driver's check and the target, built for generic x86-64 (TCG has no AVX-512).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -q -p baton-nvme --features vfio --example pcie_check --example nvmf_tgt
EX=$CARGO_TARGET_DIR/release/examples
cc -O2 -Wall -Wextra -Werror -o "$WORK/vfio-probe" ci/vfio-probe.c

# Initramfs: busybox, bash, kmod, the tools and their libraries, the needed modules.
guest_initrd_start
guest_bins bash modprobe nvme fio mkfs.ext4 e2fsck md5sum cmp lspci strace
guest_file "$EX/pcie_check" pcie_check
guest_file "$EX/nvmf_tgt" nvmf_tgt
guest_file "$WORK/vfio-probe" vfio-probe
guest_modules nvme vfio-pci vfio_iommu_type1 nvme-tcp ext4 crc32c_generic
echo "nqn.2014-08.org.nvmexpress:uuid:baton-pcie-e2e-host" > "$IRD/etc/nvme/hostnqn"
echo "7b3b3e6a-1f2d-4c55-9b8e-ba7000e2e002" > "$IRD/etc/nvme/hostid"
printf 'SECS=%d\nHUGEPAGES=%d\n' "$SECONDS_PER_RUN" "$HUGEPAGES" > "$IRD/etc/e2e.conf"

cat > "$IRD/init" <<'INIT'
#!/bin/bash
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /sys/kernel/config; mount -t configfs configfs /sys/kernel/config 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
. /etc/e2e.conf
for m in crc32c_generic ext4 nvme; do modprobe "$m" || echo "E2E: modprobe $m failed"; done
pass=0; fail=0
G0=$(cut -d. -f1 /proc/uptime)
phase() { echo "E2E phase $1 at $(( $(cut -d. -f1 /proc/uptime) - G0 )) s"; }
check() { local name=$1; shift; if "$@" > /tmp/out 2>&1; then pass=$((pass+1)); echo "E2E ok   $name"; else fail=$((fail+1)); echo "E2E FAIL $name"; head -5 /tmp/out; tail -8 /tmp/out; fi; }
# The NVMe controller's PCI address: class 0x010802 (mass storage, NVM, NVMe).
BDF=
for d in /sys/bus/pci/devices/*; do [ "$(cat "$d/class")" = 0x010802 ] && BDF=${d##*/}; done
echo "E2E info controller $BDF"
export BDF
# The namespace block device of the controller at $BDF while the kernel's nvme owns it.
pci_ns() { ls /sys/bus/pci/devices/"$BDF"/nvme/nvme*/ 2>/dev/null | grep -E '^nvme[0-9]+n1$' | head -1; }
wait_pci_ns() { local _i; for _i in $(seq 300); do [ -n "$(pci_ns)" ] && [ -b "/dev/$(pci_ns)" ] && return 0; sleep 0.1; done; return 1; }
driver_of() { basename "$(readlink "/sys/bus/pci/devices/$BDF/driver")" 2>/dev/null; }
export -f pci_ns wait_pci_ns driver_of
# fio's read IOPS (terse v3: field 8), integer.
fio_iops() { fio "$@" --output-format=terse --terse-version=3 | awk -F';' '$1 == 3 {printf "%d\n", $8}'; }
# pcie_check's "IOPS N" line.
bench_iops() { awk '$1 == "IOPS" && $2 ~ /^[0-9]+$/ {n = $2} END {if (n == "") exit 1; print n}' "$1"; }
ratio() { awk -v v="$1" -v k="$2" 'BEGIN {if (k > 0) printf "%d%%\n", v * 100 / k; else print "n/a"}'; }

# a. Baseline: the kernel's own driver.
phase baseline
PLACEHOLDER_BIN=0
pcie_check 2>&1 | grep -q BLOCKDEV || PLACEHOLDER_BIN=1
check kernel-nvme-bound bash -c '[ -n "$BDF" ] && wait_pci_ns && [ "$(driver_of)" = nvme ]'
KDEV=/dev/$(pci_ns)
echo "E2E info kernel namespace $KDEV"
check kernel-prefill fio --name=fill --filename="$KDEV" --ioengine=io_uring --direct=1 --rw=write --bs=1M --size=64M --iodepth=4
declare -A BASE URING VFIO
for qd in 1 32; do
  BASE[$qd]=$(fio_iops --name=qd$qd --filename="$KDEV" --ioengine=io_uring --direct=1 --rw=randread --bs=4k --size=64M --iodepth=$qd --runtime="$SECS" --time_based --norandommap) || true
  echo "PCIE-BASE qd$qd IOPS=${BASE[$qd]:-none}"
  check "kernel-randread-qd$qd" test "${BASE[$qd]:-0}" -gt 0
  # The same benchmark pcie_check runs on the VFIO driver, on baton's uring bdev over the
  # kernel's driver: the comparison the driver is judged by.
  [ "$PLACEHOLDER_BIN" = 1 ] && continue
  check "uring-bench-qd$qd" bash -c "pcie_check $KDEV --bench qd$qd $SECS > /tmp/ubench$qd.log 2>&1; rc=\$?; cat /tmp/ubench$qd.log; exit \$rc"
  URING[$qd]=$(bench_iops /tmp/ubench$qd.log) || URING[$qd]=
  echo "PCIE-URING qd$qd IOPS=${URING[$qd]:-none}"
done

# b. From the kernel's nvme to vfio-pci.
phase vfio-bind
check unbind-nvme bash -c 'echo "$BDF" > /sys/bus/pci/drivers/nvme/unbind && [ -z "$(driver_of)" ]'
check modprobe-vfio modprobe -a vfio-pci vfio_iommu_type1
check vfio-bound bash -c 'echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override && echo "$BDF" > /sys/bus/pci/drivers_probe && [ "$(driver_of)" = vfio-pci ]'
GROUP=$(basename "$(readlink "/sys/bus/pci/devices/$BDF/iommu_group")" 2>/dev/null)
export GROUP
echo "E2E info iommu group ${GROUP:-none}"
check vfio-group-node bash -c '[ -c "/dev/vfio/$GROUP" ] && [ -c /dev/vfio/vfio ] && ls -l /dev/vfio'
# Viable: every device of the group is bound to vfio-pci (or to no driver).
check vfio-group-viable bash -c 'for d in /sys/kernel/iommu_groups/$GROUP/devices/*; do dr=$(basename "$(readlink "$d/driver")" 2>/dev/null); echo "${d##*/} ${dr:-none}"; case "$dr" in ""|vfio-pci) ;; *) exit 1;; esac; done'
# vfio_iommu_type1 refuses a group without interrupt remapping unless allow_unsafe_interrupts.
check irq-remapping bash -c 'dmesg | grep -E "DMAR-IR: Enabled IRQ remapping" && [ "$(cat /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts)" = N ]'
lspci -nnk -s "$BDF" | sed 's/^/E2E info /'
check vfio-probe vfio-probe "$BDF"
grep -aE '^(VFIO-PROBE|vfio-probe)' /tmp/out
[ "$HUGEPAGES" -gt 0 ] && echo "$HUGEPAGES" > /proc/sys/vm/nr_hugepages
echo "E2E info hugepages $(cat /proc/sys/vm/nr_hugepages)"

# c. The driver's own checks.
phase pcie-check
# A hung driver becomes a failed check (busybox timeout, generous), not a hung guest.
check pcie-check bash -c 'timeout -s KILL 900 pcie_check "$BDF" > /tmp/pcie-check.log 2>&1; rc=$?; cat /tmp/pcie-check.log; exit $rc'
grep -aE '^(PCIE|pcie-check)' /tmp/pcie-check.log
PLACEHOLDER=0
if grep -qx 'PCIE ok placeholder' /tmp/pcie-check.log; then
  PLACEHOLDER=1
  echo "E2E note placeholder pcie_check: IOPS 0 accepted, step e runs against a RAM namespace"
fi

# d. The driver's throughput next to the kernel's.
phase pcie-bench
for qd in 1 32; do
  check "vfio-bench-qd$qd" bash -c "timeout -s KILL $((SECS + 600)) pcie_check \"\$BDF\" --bench qd$qd $SECS > /tmp/bench$qd.log 2>&1; rc=\$?; cat /tmp/bench$qd.log; exit \$rc"
  VFIO[$qd]=$(bench_iops /tmp/bench$qd.log) || VFIO[$qd]=
  echo "PCIE-VFIO qd$qd IOPS=${VFIO[$qd]:-none}"
  [ "$PLACEHOLDER" = 1 ] || check "vfio-bench-qd$qd-iops" test "${VFIO[$qd]:-0}" -gt 0
done
for qd in 1 32; do echo "PCIE-RATIO qd$qd vfio/fio-kernel=$(ratio "${VFIO[$qd]:-0}" "${BASE[$qd]:-0}") vfio/uring-bdev=$(ratio "${VFIO[$qd]:-0}" "${URING[$qd]:-0}")"; done
# System calls per I/O on the driver's path: strace counts every call of the process
# (start-up and the keeper thread's sleeps included), so two runs of different lengths are
# compared: the extra I/Os of the longer run must not bring a system call each.
strace_run() {
  strace -f -c -o /tmp/strace$1.txt pcie_check "$BDF" --bench qd32 "$1" > /tmp/sbench$1.log 2>&1 || return 1
  echo "$(( $(bench_iops /tmp/sbench$1.log) * $1 )) $(awk '$NF == "total" {print $4}' /tmp/strace$1.txt)"
  head -8 /tmp/strace$1.txt >&2
}
syscalls_per_io() {
  local a b
  echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
  a=($(strace_run 2)) && b=($(strace_run 6)) || return 1
  echo "PCIE-SYSCALLS ${a[1]} calls for ${a[0]} I/Os, ${b[1]} calls for ${b[0]} I/Os under strace: $(( b[1] - a[1] )) more calls for $(( b[0] - a[0] )) more I/Os"
  [ $(( b[0] - a[0] )) -gt 100 ] && [ $(( (b[1] - a[1]) * 5 )) -lt $(( b[0] - a[0] )) ]
}
export -f strace_run syscalls_per_io bench_iops
[ "$PLACEHOLDER" = 1 ] || check vfio-no-syscall-per-io syscalls_per_io
grep -a PCIE-SYSCALLS /tmp/out || true

# e. baton's NVMe/TCP target over the PCIe namespace, with the kernel's nvme-tcp initiator.
phase nvmf-pcie
modprobe nvme-tcp || echo "E2E: modprobe nvme-tcp failed"
if [ "$PLACEHOLDER" = 1 ]; then
  NQN=nqn.2016-06.io.baton:e2e; nvmf_tgt 127.0.0.1:4420 64 > /tmp/tgt.log 2>&1 &
else
  NQN=nqn.2016-06.io.baton:pcie; nvmf_tgt 127.0.0.1:4420 64 --pcie "$BDF" > /tmp/tgt.log 2>&1 &
fi
TGT_PID=$!
export NQN TGT_PID
for _i in $(seq 300); do grep -q ready /tmp/tgt.log && break; kill -0 $TGT_PID 2>/dev/null || break; sleep 0.2; done
check tgt-ready bash -c 'grep ready /tmp/tgt.log && kill -0 $TGT_PID'
# The namespace block device of subsystem $NQN (found by NQN: the name varies).
tcp_ns() { local s; for s in /sys/class/nvme-subsystem/nvme-subsys*; do [ "$(cat "$s/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue; ls "$s" | grep -E '^nvme[0-9]+n1$' | head -1 && return 0; done; return 1; }
wait_tcp_ns() { local _i; for _i in $(seq 300); do tcp_ns >/dev/null && [ -b "/dev/$(tcp_ns)" ] && return 0; sleep 0.1; done; return 1; }
gone_tcp_ns() { local _i; for _i in $(seq 300); do tcp_ns >/dev/null || return 0; sleep 0.1; done; return 1; }
export -f tcp_ns wait_tcp_ns gone_tcp_ns
check tcp-connect bash -c 'nvme connect -t tcp -n $NQN -a 127.0.0.1 -s 4420 --ctrl-loss-tmo=15 --reconnect-delay=2 && wait_tcp_ns'
TDEV=/dev/$(tcp_ns || echo none)
echo "E2E info nvme-tcp namespace $TDEV"
export TDEV
check tcp-fio-verify fio --name=v --filename="$TDEV" --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-128k --bs_unaligned=0 --size=32M --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1
check tcp-mkfs mkfs.ext4 -F "$TDEV"
check tcp-fs-roundtrip bash -c 'mount $TDEV /mnt && dd if=/dev/urandom of=/mnt/f bs=1M count=8 2>/dev/null && md5sum /mnt/f > /tmp/sum && umount /mnt && echo 3 > /proc/sys/vm/drop_caches && mount $TDEV /mnt && md5sum -c /tmp/sum; rc=$?; umount /mnt; exit $rc'
check tcp-fsck e2fsck -n -f "$TDEV"
check tcp-disconnect bash -c 'nvme disconnect -n $NQN && gone_tcp_ns'
check tgt-alive kill -0 $TGT_PID
kill $TGT_PID; wait $TGT_PID 2>/dev/null
grep -aiE 'panic|error' /tmp/tgt.log | head -5 | sed 's/^/E2E tgt: /'

# f. Back to the kernel's nvme: it reads what baton's driver wrote.
phase kernel-rebind
check vfio-released bash -c 'echo "$BDF" > /sys/bus/pci/drivers/vfio-pci/unbind && echo > /sys/bus/pci/devices/$BDF/driver_override && echo "$BDF" > /sys/bus/pci/drivers_probe && wait_pci_ns && [ "$(driver_of)" = nvme ]'
KDEV=/dev/$(pci_ns || echo none)
export KDEV
echo "E2E info kernel namespace again $KDEV"
if [ "$PLACEHOLDER" = 1 ]; then
  check kernel-reads-again dd if="$KDEV" of=/dev/null bs=1M count=16 iflag=direct
else
  check kernel-fsck-baton-fs e2fsck -n -f "$KDEV"
  check kernel-reads-baton-file bash -c 'mount -o ro $KDEV /mnt && md5sum -c /tmp/sum; rc=$?; umount /mnt; exit $rc'
fi
# A DMA outside what the driver mapped shows as a DMAR fault naming the device.
check no-iommu-faults bash -c '! dmesg | grep -aE "DMAR: \[(DMA|INTR)|DMAR: DRHD: handling fault"'
dmesg | grep -aiE 'DMAR:.*fault|vfio.*(error|fail)' | head -5 | sed 's/^/E2E dmesg: /'

phase end
echo "nvme-pcie e2e: $pass passed, $fail failed"
echo "E2E guest seconds: $(( $(cut -d. -f1 /proc/uptime) - G0 ))"
echo "E2E-DONE fail=$fail"
poweroff -f
INIT
guest_initrd_pack

# The controller's medium: a fresh 256 MiB raw image every run.
IMG="$WORK/nvme.img"
rm -f "$IMG" && truncate -s 256M "$IMG"

# intel-iommu comes before the devices it translates. intremap=on gives the guest interrupt
# remapping, without which vfio_iommu_type1 refuses the group; caching-mode=on makes the
# guest report every mapping to QEMU (needed when QEMU's vfio sits below; harmless here).
# kernel-irqchip=split only matters under KVM (intremap needs it there); TCG ignores it.
GUEST_MACHINE=$MACHINE GUEST_APPEND="intel_iommu=on iommu=pt" guest_run 1800 1024 \
  -device "$IOMMU" -drive file="$IMG",if=none,id=nvm,format=raw -device nvme,serial=batonpcie,drive=nvm
guest_verdict "nvme-pcie e2e" "^(E2E|PCIE|pcie-check|VFIO-PROBE)|nvme-pcie e2e|nvme nvme|vfio|DMAR"
