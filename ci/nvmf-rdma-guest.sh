# Step f of ci/rdma-e2e.sh, sourced by the guest's /init (which defines check, pass and
# fail, and has Soft-RoCE rxe0 on d0 = 192.0.2.1): baton's NVMe/RDMA target with the
# Linux kernel's nvme-rdma initiator (docs/nvme-rdma.md).
# shellcheck shell=bash
for m in crc32c_generic nvme-rdma ext4; do modprobe "$m" || echo "E2E: modprobe $m failed"; done
NQN=nqn.2016-06.io.baton:e2e
RA=192.0.2.1
# The target: its e2e and restricted subsystems on TCP (loopback) and on RDMA at $RA:4420.
nvmf_tgt 127.0.0.1:4420 128 --rdma $RA:4420 > /tmp/tgt-rdma.log 2>&1 &
NVMF_PID=$!
for i in $(seq 100); do grep -q ready /tmp/tgt-rdma.log && break; sleep 0.2; done
wait_dev() { for i in $(seq 300); do [ -b /dev/nvme0n1 ] && return 0; sleep 0.1; done; return 1; }
gone_dev() { for i in $(seq 300); do [ -b /dev/nvme0n1 ] || return 0; sleep 0.1; done; return 1; }
export -f wait_dev gone_dev
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
  check nvmf-rdma-disconnect bash -c "nvme disconnect -n $NQN && gone_dev"
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
