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
  # The host's admin and I/O queue pairs share the device's one protection domain (docs/rdma.md,
  # "One protection domain per device").
  check nvmf-rdma-one-protection-domain bash -c "grep 'nvmf_tgt: stats' /tmp/tgt-rdma.log | tail -1 | grep -qE '\"protection_domains\":1[,}]' && grep 'nvmf_tgt: stats' /tmp/tgt-rdma.log | tail -1 | grep -qE '\"protection_domain_users\":([2-9]|[1-9][0-9]+)[,}]'"
  # The kernel host registers its data buffers and asks for their keys to be invalidated
  # with the response: the target answered with SEND with Invalidate (rxe can), and the
  # host found each invalidated key to be the one it expected.
  check nvmf-rdma-send-with-invalidate bash -c "grep 'nvmf_tgt: stats' /tmp/tgt-rdma.log | tail -1 | grep -qE '\"send_with_invalidate\":[1-9]'"
  check nvmf-rdma-no-bogus-invalidation bash -c "! dmesg | grep -i 'bogus remote invalidation'"
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

# Restart points from the kernel host over NVMe/RDMA into a replicated volume, when baton
# is in the guest (not with RDMA_E2E_SKIP_CHAOS=1): `baton target` exports the volume on
# RDMA, one relay and a delayed-mode standby take the replication over TCP (loopback). The
# host writes, declares a restart point with io-passthru, and the standby applies it (its
# status names the tag); then a Flush (the volume's flush_is_restart_point) is applied as
# the next epoch.
if command -v baton > /dev/null; then
  D=/dev/shm/rdma-dr; mkdir -p $D/r1
  DRNQN=nqn.2016-06.io.baton:rdma-dr
  wait_sock() { for i in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.2; done; return 1; }
  baton standby -m 0x1 -r $D/sb.sock --listen 127.0.0.1:4672 --bdev vol=malloc,size=64M \
    --bdev stg=malloc,size=64M > $D/sb.log 2>&1 &
  SB=$!
  baton relay -m 0x2 -r $D/r1.sock --listen 127.0.0.1:4573 --journal-dir $D/r1 --journal-bytes-max 64M \
    --standby 127.0.0.1:4672 --no-direct > $D/r1.log 2>&1 &
  R1=$!
  baton target -m 0x1 -r $D/p.sock --bdev base=malloc,size=64M > $D/p.log 2>&1 &
  P=$!
  SBR="baton rpc -s $D/sb.sock"; PR="baton rpc -s $D/p.sock"
  export SBR DRNQN
  dr_setup() {
    wait_sock $D/sb.sock && wait_sock $D/r1.sock && wait_sock $D/p.sock &&
    $SBR standby_create --name v0 --mode delayed --volume_bdev vol --staging_bdev stg --format true &&
    $PR replication_create_volume --name v0 --base_bdev base --relays '["127.0.0.1:4573"]' --flush_is_restart_point true &&
    $PR nvmf_create_transport --trtype RDMA &&
    $PR nvmf_create_subsystem --nqn $DRNQN --allow_any_host true &&
    $PR nvmf_subsystem_add_ns --nqn $DRNQN --namespace '{"bdev_name":"v0"}' &&
    $PR nvmf_subsystem_add_listener --nqn $DRNQN \
      --listen_address "{\"trtype\":\"RDMA\",\"adrfam\":\"IPv4\",\"traddr\":\"$RA\",\"trsvcid\":\"4421\"}"
  }
  # The standby's applied epoch and tag reach $1 / $2 within 60 s.
  dr_applied() {
    local i st
    for i in $(seq 300); do
      st=$($SBR standby_get_status 2>/dev/null | tr -d ' \n')
      if echo "$st" | grep -qE "\"applied_epoch\":$1[,}]" && echo "$st" | grep -q "\"applied_tag\":\"$2\""; then
        echo "$st"; return 0
      fi
      sleep 0.2
    done
    echo "$st"; return 1
  }
  export -f dr_applied wait_sock
  check nvmf-rdma-dr-setup dr_setup
  check nvmf-rdma-dr-connect bash -c "nvme connect -t rdma -n $DRNQN -a $RA -s 4421 && wait_dev"
  if [ -b /dev/nvme0n1 ]; then
    check nvmf-rdma-dr-write dd if=/dev/urandom of=/dev/nvme0n1 bs=64k count=16 oflag=direct
    check nvmf-rdma-dr-restart-point bash -c "e=\$(rp rdma-dr-1) && echo epoch \$e && dr_applied \$e rdma-dr-1"
    check nvmf-rdma-dr-flush bash -c "e=\$(\$SBR standby_get_status | tr -d ' \n' | grep -oE '\"applied_epoch\":[0-9]+' | cut -d: -f2) && nvme flush /dev/nvme0n1 -n 1 && dr_applied \$((e+1)) ''"
    check nvmf-rdma-dr-disconnect bash -c "nvme disconnect -n $DRNQN && gone_dev"
  fi
  check nvmf-rdma-dr-alive kill -0 $P $R1 $SB
  if [ "$fail" != 0 ]; then
    for f in p r1 sb; do tail -15 $D/$f.log | sed "s/^/E2E dr $f: /"; done
  fi
  kill $P $R1 $SB 2>/dev/null; wait $P $R1 $SB 2>/dev/null
fi
