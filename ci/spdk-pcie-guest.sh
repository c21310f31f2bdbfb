#!/usr/bin/env bash
# End-to-end check of SPDK's NVMe driver over PCIe under baton's reactors (the `spdk-nvme`
# bdev, cargo feature `spdk`; docs/spdk.md, "PCIe") against QEMU's emulated NVMe
# controller, in a QEMU/TCG guest booting Debian's own kernel behind QEMU's emulated Intel
# IOMMU, as ci/nvme-pcie-e2e.sh does for baton's own VFIO driver.
#
# CI cannot build SPDK, so this is run by hand where SPDK is built (docs/spdk.md):
#   SPDK_DIR=/path/to/spdk ci/spdk-pcie-guest.sh
# Without SPDK_DIR, or when pkg-config finds no spdk_nvme under $SPDK_DIR/build, it prints
# "spdk-pcie guest: SKIPPED (...)" and exits 0.
#
# The `baton` binary (release, --features spdk) goes into the initramfs with its shared
# libraries (ldd closure: DPDK's, ISA-L from $SPDK_DIR, the system's); SPDK itself is
# linked statically. DPDK's mempool driver is a plugin DPDK loads from its driver
# directory, so that one plugin goes to the same directory in the guest.
#
# In the guest, on its loopback only:
#  a. the kernel's nvme driver owns the controller and writes a random 8 MiB pattern at
#     offset 8 MiB (kpat);
#  b. the controller is unbound from nvme and bound to vfio-pci; hugepages are reserved
#     and hugetlbfs mounted; without --pci-allow an spdk-nvme PCIe bdev is refused with
#     the allow-list error;
#  c. `baton target --env dpdk --pci-allow BDF`, then over JSON-RPC: bdev_spdk_nvme_attach
#     with `trtype:PCIe traddr:BDF`, an NVMe/TCP subsystem exporting it on 127.0.0.1:4420;
#     the kernel's nvme-tcp connects; the kernel's pattern reads back through SPDK's
#     driver (md5); a new pattern (spat) is written at offset 0 and read back after a
#     cache drop; fio randwrite with crc32c verify at offset 32 MiB; disconnect, delete
#     the subsystem, bdev_spdk_nvme_detach (the bdev is gone), stop the target;
#  d. the controller goes back to the kernel's nvme driver, which reads spat (what SPDK's
#     driver wrote is on the medium);
#  e. to vfio-pci again: `baton perf --env dpdk --pci-allow BDF --bdev spdk-nvme:...`
#     randrw with --verify (stamped writes, checked reads) at QD 32;
#  f. back to the kernel once more, which reads the device.
# Prints "spdk-pcie guest: N passed, M failed", "E2E-DONE fail=M" and the run times.
#
# Needs root (apt-get) the first time; downloads only Debian packages. Waits count events
# (device nodes, sockets, process exits) with generous limits; figures are reported, never
# asserted. Knobs: BATON (a baton built with --features spdk to use instead of building
# one), E2E_WORK (work directory), SPDK_PCIE_SECONDS (perf run, 5),
# SPDK_PCIE_HUGEPAGES (2 MiB pages reserved in the guest, 512), SPDK_PCIE_MEM (guest MiB,
# 2048).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${E2E_WORK:-/tmp/baton-spdk-pcie}
SECONDS_PER_RUN=${SPDK_PCIE_SECONDS:-5}
HUGEPAGES=${SPDK_PCIE_HUGEPAGES:-512}
MEM=${SPDK_PCIE_MEM:-2048}
T0=$(date +%s)

if [ -z "${SPDK_DIR:-}" ]; then
  echo "spdk-pcie guest: SKIPPED (SPDK_DIR is not set: build SPDK as docs/spdk.md says, then SPDK_DIR=... $0)"
  exit 0
fi
export PKG_CONFIG_PATH=$SPDK_DIR/build/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
if ! pkg-config --exists spdk_nvme 2>/dev/null; then
  echo "spdk-pcie guest: SKIPPED (pkg-config finds no spdk_nvme in $SPDK_DIR/build/lib/pkgconfig: SPDK is not built there)"
  exit 0
fi
mkdir -p "$WORK"

# shellcheck source=ci/guest-lib.sh
. ci/guest-lib.sh
guest_packages "spdk-pcie guest" qemu-system-x86 busybox-static kmod cpio nvme-cli fio pciutils
guest_kernel

# baton with SPDK, for generic x86-64 (TCG has no AVX-512). The ISA-L libraries come from
# SPDK's tree (the binary's run path names them; LD_LIBRARY_PATH covers a build without).
if [ -z "${BATON:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  cargo build --release -q --features spdk --bin baton
  BATON=$CARGO_TARGET_DIR/release/baton
fi
export LD_LIBRARY_PATH=$SPDK_DIR/isa-l/.libs:$SPDK_DIR/isa-l-crypto/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BATON" | grep -q 'not found'; then
  ldd "$BATON" | grep 'not found' >&2
  echo "spdk-pcie guest: baton's libraries are not all found" >&2
  exit 1
fi
# DPDK loads its drivers from a directory compiled into librte_eal (every .so there, each
# of which must load); the guest gets only the ring-based mempool driver, which DPDK's
# default mempool ops need.
PMDS=$(ls -d /usr/lib/x86_64-linux-gnu/dpdk/pmds-* 2>/dev/null | head -1)
[ -n "$PMDS" ] || { echo "spdk-pcie guest: no DPDK driver directory (libdpdk-dev?)" >&2; exit 1; }

guest_initrd_start
guest_bins bash modprobe nvme fio md5sum cmp lspci
guest_file "$BATON" baton
mkdir -p "$IRD$PMDS"
# As on the host: one file, the other names symlinks to it (EAL loads every name ending
# in .so or .so.ABI, and the same library loaded twice would register its ops twice).
cp -a "$PMDS"/librte_mempool_ring.so* "$IRD$PMDS/"
guest_libs "$PMDS/librte_mempool_ring.so"
guest_modules nvme vfio-pci vfio_iommu_type1 nvme-tcp crc32c_generic
echo "nqn.2014-08.org.nvmexpress:uuid:baton-spdk-pcie-host" > "$IRD/etc/nvme/hostnqn"
echo "7b3b3e6a-1f2d-4c55-9b8e-ba7000e2e003" > "$IRD/etc/nvme/hostid"
printf 'SECS=%d\nHUGEPAGES=%d\nLD_LIBRARY_PATH=%s\n' "$SECONDS_PER_RUN" "$HUGEPAGES" "$LD_LIBRARY_PATH" > "$IRD/etc/e2e.conf"

cat > "$IRD/init" <<'INIT'
#!/bin/bash
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /var/run/dpdk  # EAL writes its runtime directory there, even --in-memory
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
. /etc/e2e.conf
export LD_LIBRARY_PATH BATON_LOG=info
for m in crc32c_generic nvme; do modprobe "$m" || echo "E2E: modprobe $m failed"; done
pass=0; fail=0
G0=$(cut -d. -f1 /proc/uptime)
phase() { echo "E2E phase $1 at $(( $(cut -d. -f1 /proc/uptime) - G0 )) s"; }
check() { local name=$1; shift; if "$@" > /tmp/out 2>&1; then pass=$((pass+1)); echo "E2E ok   $name"; else fail=$((fail+1)); echo "E2E FAIL $name"; head -5 /tmp/out; tail -12 /tmp/out; fi; }
BDF=
for d in /sys/bus/pci/devices/*; do [ "$(cat "$d/class")" = 0x010802 ] && BDF=${d##*/}; done
echo "E2E info controller $BDF"
export BDF
pci_ns() { ls /sys/bus/pci/devices/"$BDF"/nvme/nvme*/ 2>/dev/null | grep -E '^nvme[0-9]+n1$' | head -1; }
wait_pci_ns() { local _i; for _i in $(seq 300); do [ -n "$(pci_ns)" ] && [ -b "/dev/$(pci_ns)" ] && return 0; sleep 0.1; done; return 1; }
driver_of() { basename "$(readlink "/sys/bus/pci/devices/$BDF/driver")" 2>/dev/null; }
to_vfio() { echo "$BDF" > /sys/bus/pci/drivers/nvme/unbind && echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override && echo "$BDF" > /sys/bus/pci/drivers_probe && [ "$(driver_of)" = vfio-pci ]; }
to_kernel() { echo "$BDF" > /sys/bus/pci/drivers/vfio-pci/unbind && echo > /sys/bus/pci/devices/$BDF/driver_override && echo "$BDF" > /sys/bus/pci/drivers_probe && wait_pci_ns && [ "$(driver_of)" = nvme ]; }
# md5 of 8 MiB of device $1 at MiB offset $2, bypassing the page cache.
md5_at() { dd if="$1" bs=1M skip="$2" count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }
export -f pci_ns wait_pci_ns driver_of to_vfio to_kernel md5_at
SPEC="spdk-nvme:trtype:PCIe traddr:$BDF"
export SPEC

# a. The kernel's driver writes a pattern.
phase kernel
check kernel-nvme-bound bash -c '[ -n "$BDF" ] && wait_pci_ns && [ "$(driver_of)" = nvme ]'
KDEV=/dev/$(pci_ns)
export KDEV
dd if=/dev/urandom of=/tmp/kpat bs=1M count=8 2>/dev/null
dd if=/dev/urandom of=/tmp/spat bs=1M count=8 2>/dev/null
KMD5=$(md5sum < /tmp/kpat | cut -d' ' -f1); SMD5=$(md5sum < /tmp/spat | cut -d' ' -f1)
export KMD5 SMD5
check kernel-writes-pattern bash -c 'dd if=/tmp/kpat of=$KDEV bs=1M seek=8 oflag=direct && [ "$(md5_at $KDEV 8)" = $KMD5 ]'

# b. To vfio-pci, with hugepages.
phase vfio-bind
check modprobe-vfio modprobe -a vfio-pci vfio_iommu_type1
check vfio-bound to_vfio
GROUP=$(basename "$(readlink "/sys/bus/pci/devices/$BDF/iommu_group")" 2>/dev/null)
echo "E2E info iommu group ${GROUP:-none}"
check vfio-group-node test -c "/dev/vfio/$GROUP"
echo "$HUGEPAGES" > /proc/sys/vm/nr_hugepages
mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages
echo "E2E info hugepages $(cat /proc/sys/vm/nr_hugepages)"
check hugepages test "$(cat /proc/sys/vm/nr_hugepages)" -gt 0
# Without the allow-list DPDK runs with --no-pci: the bdev says what is missing.
check pcie-refused-without-allow-list bash -c 'timeout -s KILL 600 baton perf --env dpdk --bdev "$SPEC" -t 1 --warmup 0 > /tmp/refused.log 2>&1; rc=$?; cat /tmp/refused.log; [ $rc -ne 0 ] && grep -q "allow-list" /tmp/refused.log'

# c. baton target, the controller attached by RPC and exported over NVMe/TCP.
phase target
S=/tmp/baton.sock
NQN=nqn.2016-06.io.baton:spdk-pcie
export S NQN
baton target --env dpdk --pci-allow "$BDF" -r $S > /tmp/tgt.log 2>&1 &
TGT_PID=$!
export TGT_PID
for _i in $(seq 1200); do [ -S $S ] && baton rpc -s $S spdk_get_version > /dev/null 2>&1 && break; kill -0 $TGT_PID 2>/dev/null || break; sleep 0.25; done
check tgt-ready bash -c 'kill -0 $TGT_PID && baton rpc -s $S spdk_get_version'
r() { timeout -s KILL 600 baton rpc -s $S "$@"; }
export -f r
check rpc-attach-pcie bash -c 'r bdev_spdk_nvme_attach --name P0 --trid "trtype:PCIe traddr:$BDF" && r bdev_get_bdevs --name P0'
grep -aE '"(model|serial|num_blocks|block_size|trid)"' /tmp/out | sed 's/^/E2E info /'
check rpc-export bash -c 'r nvmf_create_transport --trtype TCP && r nvmf_create_subsystem --nqn $NQN --allow_any_host true && r nvmf_subsystem_add_ns --nqn $NQN --namespace "{\"bdev_name\":\"P0\"}" && r nvmf_subsystem_add_listener --nqn $NQN --listen_address "{\"trtype\":\"TCP\",\"adrfam\":\"IPv4\",\"traddr\":\"127.0.0.1\",\"trsvcid\":\"4420\"}"'
modprobe nvme-tcp || echo "E2E: modprobe nvme-tcp failed"
tcp_ns() { local s; for s in /sys/class/nvme-subsystem/nvme-subsys*; do [ "$(cat "$s/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue; ls "$s" | grep -E '^nvme[0-9]+n1$' | head -1 && return 0; done; return 1; }
wait_tcp_ns() { local _i; for _i in $(seq 300); do tcp_ns >/dev/null && [ -b "/dev/$(tcp_ns)" ] && return 0; sleep 0.1; done; return 1; }
gone_tcp_ns() { local _i; for _i in $(seq 300); do tcp_ns >/dev/null || return 0; sleep 0.1; done; return 1; }
export -f tcp_ns wait_tcp_ns gone_tcp_ns
check tcp-connect bash -c 'nvme connect -t tcp -n $NQN -a 127.0.0.1 -s 4420 --ctrl-loss-tmo=15 --reconnect-delay=2 && wait_tcp_ns'
TDEV=/dev/$(tcp_ns || echo none)
echo "E2E info nvme-tcp namespace $TDEV"
export TDEV
check spdk-reads-kernel-pattern bash -c '[ "$(md5_at $TDEV 8)" = $KMD5 ]'
check spdk-writes-pattern bash -c 'dd if=/tmp/spat of=$TDEV bs=1M oflag=direct && echo 3 > /proc/sys/vm/drop_caches && [ "$(md5_at $TDEV 0)" = $SMD5 ]'
check tcp-fio-verify fio --name=v --filename="$TDEV" --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-128k --bs_unaligned=0 --offset=32M --size=32M --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1
check tcp-disconnect bash -c 'nvme disconnect -n $NQN && gone_tcp_ns'
check rpc-detach bash -c 'r nvmf_delete_subsystem --nqn $NQN && r bdev_spdk_nvme_detach --name P0 && ! r bdev_get_bdevs --name P0'
check tgt-alive kill -0 $TGT_PID
kill $TGT_PID; wait $TGT_PID 2>/dev/null
grep -aiE 'panic|error|spdk|EAL' /tmp/tgt.log | head -12 | sed 's/^/E2E tgt: /'

# d. The kernel reads what SPDK's driver wrote.
phase kernel-rebind
check vfio-released to_kernel
KDEV=/dev/$(pci_ns || echo none)
export KDEV
check kernel-reads-spdk-pattern bash -c '[ "$(md5_at $KDEV 0)" = $SMD5 ]'

# e. baton perf with verify on the PCIe bdev.
phase perf
check vfio-bound-again to_vfio
check perf-randrw-verify bash -c "timeout -s KILL 900 baton perf --env dpdk --pci-allow \$BDF --bdev \"\$SPEC\" -w randrw -q 32 -o 4096 -t $SECS --warmup 0 --verify > /tmp/perf.log 2>&1; rc=\$?; cat /tmp/perf.log; exit \$rc"
grep -avE '^\[|^$' /tmp/perf.log | tail -8 | sed 's/^/E2E perf: /'

# f. Back to the kernel.
phase kernel-rebind-2
check vfio-released-again to_kernel
KDEV=/dev/$(pci_ns || echo none)
check kernel-reads-again dd if="$KDEV" of=/dev/null bs=1M count=16 iflag=direct
check no-iommu-faults bash -c '! dmesg | grep -aE "DMAR: \[(DMA|INTR)|DMAR: DRHD: handling fault"'
dmesg | grep -aiE 'DMAR:.*fault|vfio.*(error|fail)' | head -5 | sed 's/^/E2E dmesg: /'

phase end
echo "spdk-pcie guest: $pass passed, $fail failed"
echo "E2E guest seconds: $(( $(cut -d. -f1 /proc/uptime) - G0 ))"
echo "E2E-DONE fail=$fail"
poweroff -f
INIT
guest_initrd_pack

IMG="$WORK/nvme.img"
rm -f "$IMG" && truncate -s 256M "$IMG"

GUEST_MACHINE=q35,accel=tcg,kernel-irqchip=split GUEST_APPEND="intel_iommu=on iommu=pt" guest_run 2400 "$MEM" \
  -device intel-iommu,intremap=on,caching-mode=on -drive file="$IMG",if=none,id=nvm,format=raw \
  -device nvme,serial=batonspdk,drive=nvm
guest_verdict "spdk-pcie guest" "^(E2E|SPDK|EAL)|spdk-pcie guest|nvme nvme|vfio|DMAR"
