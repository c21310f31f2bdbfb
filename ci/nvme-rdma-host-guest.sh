# Step g of ci/rdma-e2e.sh, sourced by the guest's /init (which defines check, pass and
# fail) when baton is in the guest: baton's NVMe/RDMA host, `baton perf -r 'trtype:RDMA …'
# --verify` (docs/nvme-rdma.md, "The host side"), against baton's own NVMe/RDMA target
# (nvmf_tgt) and, when the guest kernel has nvmet-rdma, against the Linux kernel target.
# Each run is a mixed random workload: --verify checks every read against the writes of
# the same run, so each size gets a namespace no earlier run stamped.
# shellcheck shell=bash
RA=192.0.2.1
NQN=nqn.2016-06.io.baton:e2e
# host_perf NAME TRID IO_SIZE: randrw (half reads) with --verify, QD 8, 4 s; zero errors.
host_perf() {
  local name=$1 trid=$2 o=$3 rc
  timeout -s KILL 180 baton perf -r "$trid" -w randrw -M 50 -o "$o" -q 8 -t 4 --warmup 0 -m 0x1 --verify \
    > "/tmp/hp-$name.log" 2>&1
  rc=$?
  cat "/tmp/hp-$name.log"
  [ $rc = 0 ] && grep -q '^Total' "/tmp/hp-$name.log" && ! grep -qE 'ERRORS|panicked' "/tmp/hp-$name.log"
}
# A fresh baton NVMe/RDMA target (64 MiB malloc namespace) on $RA:$1.
tgt_start() {
  nvmf_tgt 127.0.0.1:$(($1 + 100)) 64 --rdma "$RA:$1" > "/tmp/htgt-$1.log" 2>&1 &
  TGT=$!
  for i in $(seq 100); do grep -q ready "/tmp/htgt-$1.log" && return 0; sleep 0.2; done
  return 1
}
tgt_stop() { kill "$TGT" 2>/dev/null; wait "$TGT" 2>/dev/null; }
export -f host_perf
BT="trtype:RDMA adrfam:IPv4 traddr:$RA trsvcid:4425 subnqn:$NQN"
tgt_start 4425
check rdma-host-baton-tgt-4k host_perf b4k "$BT" 4096
tgt_stop; tgt_start 4425
check rdma-host-baton-tgt-128k host_perf b128k "$BT" 131072
# Bad input: an unknown subsystem is refused by Connect with a clear error (no panic).
check rdma-host-unknown-subsystem bash -c "timeout -s KILL 60 baton perf -r 'trtype:RDMA traddr:$RA trsvcid:4425 subnqn:nqn.2016-06.io.baton:none' -t 1 -m 0x1 > /tmp/hp-bad.log 2>&1; rc=\$?; cat /tmp/hp-bad.log; [ \$rc != 0 ] && [ \$rc != 137 ] && grep -qi 'connect' /tmp/hp-bad.log && ! grep -q panicked /tmp/hp-bad.log"
# bdev_nvme_attach_controller with trtype RDMA (SPDK's parameters) in a `baton target`:
# the namespace's bdev appears and bdev_nvme_get_controllers names the transport.
rpc_attach() {
  baton target -m 0x1 -r /tmp/ha.sock > /tmp/ha.log 2>&1 &
  local p=$! i out g rc
  for i in $(seq 100); do [ -S /tmp/ha.sock ] && break; sleep 0.2; done
  out=$(baton rpc -s /tmp/ha.sock bdev_nvme_attach_controller --name r0 --trtype '"rdma"' --adrfam '"IPv4"' \
    --traddr "\"$RA\"" --trsvcid '"4425"' --subnqn "\"$NQN\"" 2>&1); rc=$?
  g=$(baton rpc -s /tmp/ha.sock bdev_nvme_get_controllers 2>&1)
  echo "$out"; echo "$g"
  kill $p; wait $p 2>/dev/null
  [ $rc = 0 ] && echo "$out" | grep -q r0n1 && echo "$g" | grep -q '"RDMA"'
}
export -f rpc_attach
export RA NQN
check rdma-host-rpc-attach rpc_attach
# The target dies (SIGKILL) in the middle of a run: the run ends with I/O errors (perf's
# ERRORS line), not a hang or a panic.
kill_mid_io() {
  timeout -s KILL 120 baton perf -r "$BT" -w randrw -o 4096 -q 8 -t 30 --warmup 0 -m 0x1 > /tmp/hp-kill.log 2>&1 &
  local p=$! rc
  sleep 8
  kill -9 "$TGT"
  wait $p; rc=$?
  tail -8 /tmp/hp-kill.log
  [ $rc != 0 ] && [ $rc != 137 ] && grep -q '^ERRORS: [1-9]' /tmp/hp-kill.log && ! grep -q panicked /tmp/hp-kill.log
}
export -f kill_mid_io
check rdma-host-target-killed-mid-io kill_mid_io
wait "$TGT" 2>/dev/null
# The figures (columns: IOPS, MiB/s, avg, min, p50, p99, max µs, cpu %) and the errors the
# host gave for the bad cases, on the console.
for f in b4k b128k; do grep -h '^Total' "/tmp/hp-$f.log" | sed "s/^/NVMF-RDMA host vs baton target $f: /"; done
grep -iE 'error|refused|failed' /tmp/hp-bad.log | head -3 | sed 's/^/NVMF-RDMA host, unknown subsystem: /'
grep -E '^(Total|ERRORS)' /tmp/hp-kill.log | sed 's/^/NVMF-RDMA host, target killed: /'

# The Linux kernel target (nvmet-rdma), namespaces in files on tmpfs (buffered: tmpfs has
# no O_DIRECT on this kernel), one per run.
if modprobe nvmet && modprobe nvmet-rdma; then
  grep -q " /sys/kernel/config configfs" /proc/mounts || mount -t configfs none /sys/kernel/config
  K=/sys/kernel/config/nvmet
  KNQN=nqn.2016-06.io.baton:kernel-tgt
  ktgt_setup() {
    mkdir "$K/subsystems/$KNQN" && echo 1 > "$K/subsystems/$KNQN/attr_allow_any_host" || return 1
    for n in 1 2; do
      truncate -s 64M "/dev/shm/kns$n" && mkdir "$K/subsystems/$KNQN/namespaces/$n" &&
        echo "/dev/shm/kns$n" > "$K/subsystems/$KNQN/namespaces/$n/device_path" &&
        echo 1 > "$K/subsystems/$KNQN/namespaces/$n/buffered_io" &&
        echo 1 > "$K/subsystems/$KNQN/namespaces/$n/enable" || return 1
    done
    mkdir "$K/ports/1" && echo rdma > "$K/ports/1/addr_trtype" && echo ipv4 > "$K/ports/1/addr_adrfam" &&
      echo "$RA" > "$K/ports/1/addr_traddr" && echo 4430 > "$K/ports/1/addr_trsvcid" &&
      ln -s "$K/subsystems/$KNQN" "$K/ports/1/subsystems/$KNQN"
  }
  check rdma-host-kernel-tgt-setup ktgt_setup
  KT="trtype:RDMA adrfam:IPv4 traddr:$RA trsvcid:4430 subnqn:$KNQN"
  check rdma-host-kernel-tgt-4k host_perf k4k "$KT ns:1" 4096
  check rdma-host-kernel-tgt-128k host_perf k128k "$KT ns:2" 131072
  check rdma-host-kernel-no-errors bash -c "! dmesg | grep -iE 'nvmet.*(error|invalid|bogus)'"
  for f in k4k k128k; do grep -h '^Total' "/tmp/hp-$f.log" | sed "s/^/NVMF-RDMA host vs kernel target $f: /"; done
  if [ "$fail" != 0 ]; then dmesg | grep -iE 'nvmet|rdma' | tail -20 | sed 's/^/E2E dmesg: /'; fi
else
  echo "E2E: no nvmet-rdma in the guest kernel: the kernel target checks are skipped"
fi
