# Step f of ci/rdma-e2e.sh, sourced by the guest's /init (which defines check, pass and
# fail, and has Soft-RoCE rxe0 on d0 = 192.0.2.1): baton's NVMe/RDMA target with the
# Linux kernel's nvme-rdma initiator (docs/nvme-rdma.md); then restart points (opcode 0x81,
# Flush as a restart point, a sink that does not answer in time, a host that disconnects
# while one is pending) and Compare on the RDMA queues, against nvmf_tgt's test sink
# (--rp-sink, which prints each restart point it takes).
# shellcheck shell=bash
for m in crc32c_generic nvme-rdma ext4; do modprobe "$m" || echo "E2E: modprobe $m failed"; done
NQN=nqn.2016-06.io.baton:e2e
RA=192.0.2.1
# The target: its e2e and restricted subsystems on TCP (loopback) and on RDMA at $RA:4420.
mkfifo /tmp/tgt-ctl
nvmf_tgt 127.0.0.1:4420 128 --rdma $RA:4420 --rp-sink --ctl /tmp/tgt-ctl > /tmp/tgt-rdma.log 2>&1 &
NVMF_PID=$!
for i in $(seq 100); do grep -q ready /tmp/tgt-rdma.log && break; sleep 0.2; done
wait_dev() { for i in $(seq 300); do [ -b /dev/nvme0n1 ] && return 0; sleep 0.1; done; return 1; }
gone_dev() { for i in $(seq 300); do [ -b /dev/nvme0n1 ] || return 0; sleep 0.1; done; return 1; }
export -f wait_dev gone_dev
# A restart point with tag $1 by io-passthru; prints the epoch the target answered
# (decimal), fails on an error status.
rp() {
  printf '%s' "$1" > /tmp/tag
  local out
  out=$(nvme io-passthru /dev/nvme0n1 --opcode=0x81 --namespace-id=1 --cdw10=${#1} --data-len=${#1} \
    --write --input-file=/tmp/tag 2>&1) || { echo "$out" >&2; return 1; }
  echo "$out" >&2
  # nvme-cli prints "... is Success and result: 0x00000015" (older ones without 0x).
  echo $((16#$(echo "$out" | sed -n 's/.*result: *\(0x\)\{0,1\}\([0-9a-fA-F]*\).*/\2/p')))
}
# The epoch of tag $1 came back to the host and is the one the sink gave that tag.
rp_check() { local e; e=$(rp "$1") && [ "$e" -gt 0 ] && grep -q "restart point $e tag '$1'" /tmp/tgt-rdma.log; }
# A restart point the sink never answers: Namespace Not Ready after the 3 s deadline.
rp_timeout() {
  local t0 rc
  t0=$(date +%s)
  rp hold > /tmp/hold.log 2>&1; rc=$?
  cat /tmp/hold.log
  [ $rc != 0 ] && grep -qiE 'not.?ready|0x82' /tmp/hold.log && [ $(( $(date +%s) - t0 )) -ge 2 ]
}
export -f rp rp_check rp_timeout
check nvmf-rdma-target-up grep -q "on RDMA $RA:4420" /tmp/tgt-rdma.log
check nvmf-rdma-discover bash -c "nvme discover -t rdma -a $RA -s 4420 | tee /dev/stderr | grep -A8 $NQN | grep -q 'trtype: *rdma'"
check nvmf-rdma-connect bash -c "nvme connect -t rdma -n $NQN -a $RA -s 4420 && wait_dev"
if [ -b /dev/nvme0n1 ]; then
  check nvmf-rdma-transport bash -c "cat /sys/class/nvme/nvme0/transport | tee /dev/stderr | grep -qx rdma"
  check nvmf-rdma-id-ctrl bash -c "nvme id-ctrl /dev/nvme0 | tee /dev/stderr | grep -q 'baton e2e'"
  check nvmf-rdma-fio-randwrite-4k fio --name=r4k --filename=/dev/nvme0n1 --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --size=32M --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1
  cp /tmp/out /tmp/fio-r4k.log
  check nvmf-rdma-fio-seq-128k fio --name=s128k --filename=/dev/nvme0n1 --ioengine=libaio --direct=1 \
    --rw=write --bs=128k --size=64M --iodepth=4 --verify=crc32c --verify_fatal=1 --do_verify=1
  cp /tmp/out /tmp/fio-s128k.log
  for f in r4k s128k; do
    grep -E '^ *(write|read):' /tmp/fio-$f.log | sed "s/^ */NVMF-RDMA fio $f (QEMU TCG, Soft-RoCE): /"
  done
  check nvmf-rdma-mkfs mkfs.ext4 -F /dev/nvme0n1
  check nvmf-rdma-fs-roundtrip bash -c "mount /dev/nvme0n1 /mnt && dd if=/dev/urandom of=/mnt/f bs=1M count=8 2>/dev/null && md5sum /mnt/f > /tmp/sum && umount /mnt && echo 3 > /proc/sys/vm/drop_caches && mount /dev/nvme0n1 /mnt && md5sum -c /tmp/sum && fstrim -v /mnt; rc=\$?; umount /mnt; exit \$rc"
  check nvmf-rdma-fsck e2fsck -n -f /dev/nvme0n1
  # Dataset Management (mkfs's and fstrim's discards) and every other command succeeded.
  check nvmf-rdma-no-io-errors bash -c "! dmesg | grep -E 'nvme0.*I/O Error|I/O error, dev nvme0'"
  # Restart points: answered (epoch in the completion), Flush one with an empty tag, a sink
  # that does not answer completes Namespace Not Ready at the deadline (3 s) and the queue
  # goes on.
  check nvmf-rdma-restart-point rp_check rdma-rp-1
  check nvmf-rdma-restart-point-long-tag rp_check "rdma-rp-long-$(printf 'x%.0s' $(seq 200))"
  check nvmf-rdma-flush-restart-point bash -c "n=\$(grep -c \"tag ''\" /tmp/tgt-rdma.log); nvme flush /dev/nvme0n1 -n 1 && [ \$(grep -c \"tag ''\" /tmp/tgt-rdma.log) -gt \$n ]"
  check nvmf-rdma-restart-point-timeout rp_timeout
  check nvmf-rdma-restart-point-after-timeout rp_check rdma-rp-2
  # Compare: 4 KiB (in-capsule) and 8 KiB (keyed) equal, then one byte differs.
  dd if=/dev/urandom of=/tmp/cmp bs=4096 count=2 2>/dev/null
  check nvmf-rdma-compare-write dd if=/tmp/cmp of=/dev/nvme0n1 bs=4096 seek=100 oflag=direct conv=notrunc
  check nvmf-rdma-compare-4k nvme compare /dev/nvme0n1 -n 1 -s 100 -c 0 -z 4096 -d /tmp/cmp
  check nvmf-rdma-compare-8k nvme compare /dev/nvme0n1 -n 1 -s 100 -c 1 -z 8192 -d /tmp/cmp
  cp /tmp/cmp /tmp/cmp2; printf 'X' | dd of=/tmp/cmp2 bs=1 seek=5000 conv=notrunc 2>/dev/null
  check nvmf-rdma-miscompare bash -c "nvme compare /dev/nvme0n1 -n 1 -s 100 -c 1 -z 8192 -d /tmp/cmp2 > /tmp/c 2>&1; rc=\$?; cat /tmp/c; [ \$rc != 0 ] && grep -qiE 'compare|0x285' /tmp/c"
  # nvmf_get_stats while connected: the RDMA poll group's counters moved (capsules taken,
  # work completions, one restart point timed out, one I/O queue pair or more now).
  check nvmf-rdma-stats bash -c "echo stats > /tmp/tgt-ctl; for i in \$(seq 50); do grep -q 'nvmf_tgt: stats' /tmp/tgt-rdma.log && break; sleep 0.1; done; grep 'nvmf_tgt: stats' /tmp/tgt-rdma.log | tail -1 | tee /dev/stderr | grep '\"trtype\":\"RDMA\"' | grep -q '\"restart_point_timeouts\":1' && grep 'nvmf_tgt: stats' /tmp/tgt-rdma.log | tail -1 | grep -qE '\"requests\":[1-9]'"
  grep 'nvmf_tgt: stats' /tmp/tgt-rdma.log | tail -1 | sed 's/^/NVMF-RDMA /'
  # The host leaves while a restart point is pending; its answer comes after the queue
  # closed and completes nothing (the target stays up: checked below).
  (rp late > /tmp/late.log 2>&1 &)
  sleep 0.5
  check nvmf-rdma-disconnect bash -c "nvme disconnect -n $NQN && gone_dev"
  check nvmf-rdma-late-answer-after-disconnect bash -c "for i in \$(seq 50); do grep -q 'answered late' /tmp/tgt-rdma.log && exit 0; sleep 0.1; done; exit 1"
else
  fail=$((fail+1)); echo "E2E FAIL nvmf-rdma-no-namespace"
  dmesg | grep -iE 'nvme|rdma' | tail -20
fi
check nvmf-rdma-restricted-refused bash -c "! nvme connect -t rdma -n nqn.2016-06.io.baton:restricted -a $RA -s 4420"
check nvmf-rdma-target-alive kill -0 $NVMF_PID
if [ "$fail" != 0 ]; then
  tail -40 /tmp/tgt-rdma.log | sed 's/^/E2E tgt: /'
  dmesg | grep -iE 'nvme|rdma' | tail -30 | sed 's/^/E2E dmesg: /'
fi
kill $NVMF_PID 2>/dev/null; wait $NVMF_PID 2>/dev/null
