#!/usr/bin/env bash
# End-to-end check of baton's in-band authentication (DH-HMAC-CHAP) with an independent
# host: the Linux kernel's nvme-tcp in a QEMU guest. Debian 12's default kernel (6.1) has
# no usable NVMe in-band authentication, so this boots Debian's 6.12 kernel package
# (AUTH_KERNEL_PKG overrides it); one guest boot (TESTING.md describes the guest).
#
# Secrets come from nvme-cli's `nvme gen-dhchap-key` on this machine. In the guest, on its
# loopback only: nvme/examples/nvmf_tgt serves nqn.2016-06.io.baton:auth to two host NQNs,
# one with a host key (unidirectional), one with host and controller keys (bidirectional).
# Checks: connect with the right secret, fio with crc32c verify, disconnect, connect again
# (reconnect after disconnect), a wrong secret and no secret refused, bidirectional connect
# with dd read-back, a wrong controller secret refused by the host. Then the same
# subsystem over NVMe/RDMA (the target built with `rdma`, Soft-RoCE on a guest-only dummy
# device as in ci/rdma-e2e.sh, the kernel's nvme-rdma host): no secret and a wrong secret
# refused, one-way and bidirectional authentication with data read back. Prints
# "nvme-auth e2e: N passed, M failed" and the guest's run time.
#
# Needs root (apt-get) the first time; downloads only Debian packages. ci/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${E2E_AUTH_WORK:-/tmp/baton-auth-e2e}
mkdir -p "$WORK"
T0=$(date +%s)

# shellcheck source=ci/guest-lib.sh
. ci/guest-lib.sh
guest_packages "nvme-auth e2e" qemu-system-x86 busybox-static kmod cpio nvme-cli fio xz-utils iproute2 \
  rdma-core ibverbs-providers
guest_kernel "${AUTH_KERNEL_PKG:-linux-image-6.12.100+deb12-amd64}"

# The target, built for generic x86-64 (TCG has no AVX-512).
# With the NVMe/RDMA target (feature `rdma`: libibverbs-dev, librdmacm-dev, libclang-dev, as
# ci/test.sh installs them before this runs).
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo build --release -q -p baton-nvme --features rdma --example nvmf_tgt
TGT=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/nvmf_tgt

HOST1=nqn.2014-08.org.nvmexpress:uuid:baton-e2e-host
HOST2=nqn.2014-08.org.nvmexpress:uuid:baton-e2e-host2
KEY1=$(nvme gen-dhchap-key --hmac=1 --nqn="$HOST1")
WRONG=$(nvme gen-dhchap-key --hmac=1 --nqn="$HOST1")
KEY2=$(nvme gen-dhchap-key --hmac=3 --nqn="$HOST2")
CKEY2=$(nvme gen-dhchap-key --hmac=2 --key-length=48 --nqn="$HOST2")
CWRONG=$(nvme gen-dhchap-key --hmac=2 --key-length=48 --nqn="$HOST2")

guest_initrd_start
guest_bins bash modprobe nvme fio dd cmp ip rdma
guest_file "$TGT" nvmf_tgt
guest_modules nvme-tcp crc32c_generic nvme-rdma crc32_generic rdma_rxe ib_uverbs rdma_ucm dummy
# Soft-RoCE's verbs provider (dlopen'ed by libibverbs, so ldd does not see it).
mkdir -p "$IRD/etc/libibverbs.d" "$IRD/usr/lib/x86_64-linux-gnu/libibverbs"
cp /etc/libibverbs.d/rxe.driver "$IRD/etc/libibverbs.d/"
cp -L /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so "$IRD/usr/lib/x86_64-linux-gnu/libibverbs/"
guest_libs "$(ls /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so | head -1)"
echo "$HOST1" > "$IRD/etc/nvme/hostnqn"
echo "7b3b3e6a-1f2d-4c55-9b8e-ba7000e2e002" > "$IRD/etc/nvme/hostid"
mkdir -p "$IRD/etc/keys"
echo "$KEY1" > "$IRD/etc/keys/host1.key"
echo "$KEY2" > "$IRD/etc/keys/host2.key"
echo "$CKEY2" > "$IRD/etc/keys/ctrl2.key"
chmod 600 "$IRD"/etc/keys/*.key
cat > "$IRD/etc/keys/env" <<ENV
HOST1=$HOST1
HOST2=$HOST2
KEY1='$KEY1'
WRONG='$WRONG'
KEY2='$KEY2'
CKEY2='$CKEY2'
CWRONG='$CWRONG'
ENV

cat > "$IRD/init" <<'INIT'
#!/bin/bash
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
for m in crc32c_generic nvme-tcp crc32_generic rdma_rxe ib_uverbs rdma_ucm dummy nvme-rdma; do
  modprobe "$m" || echo "E2E: modprobe $m failed"
done
# Soft-RoCE on a guest-only dummy interface (rdma_cm does not work over 127.0.0.1 on rxe).
RA=192.0.2.1
RDMA_ARGS=()
if ip link add d0 type dummy && ip addr add $RA/24 dev d0 && ip link set d0 up && rdma link add rxe0 type rxe netdev d0; then
  RDMA_ARGS=(--rdma $RA:4420)
else
  echo "E2E: Soft-RoCE setup failed"
fi
. /etc/keys/env
export HOST1 HOST2 KEY1 WRONG KEY2 CKEY2 CWRONG
pass=0; fail=0
G0=$(cut -d. -f1 /proc/uptime)
check() { local name=$1; shift; if "$@" > /tmp/out 2>&1; then pass=$((pass+1)); echo "E2E ok   $name"; else fail=$((fail+1)); echo "E2E FAIL $name"; head -5 /tmp/out; tail -8 /tmp/out; fi; }
NQN=nqn.2016-06.io.baton:auth
export NQN
nvmf_tgt 127.0.0.1:4420 64 --auth "$HOST1=/etc/keys/host1.key" --auth "$HOST2=/etc/keys/host2.key,/etc/keys/ctrl2.key" \
  "${RDMA_ARGS[@]}" > /tmp/tgt.log 2>&1 &
TGT_PID=$!
for i in $(seq 50); do grep -q ready /tmp/tgt.log && break; sleep 0.2; done
dev() { ls /dev/nvme*n1 2>/dev/null | head -1; }
wait_dev() { for i in $(seq 100); do [ -n "$(dev)" ] && return 0; sleep 0.1; done; return 1; }
gone_dev() { for i in $(seq 100); do [ -z "$(dev)" ] && return 0; sleep 0.1; done; return 1; }
conn() { nvme connect -t tcp -n $NQN -a 127.0.0.1 -s 4420 --ctrl-loss-tmo=5 --reconnect-delay=1 "$@"; }
export -f dev wait_dev gone_dev conn
check connect-good-secret bash -c 'conn --dhchap-secret="$KEY1" && wait_dev'
check kernel-says-authenticated bash -c 'dmesg | grep -E "qid 0: authenticated" | tail -2 | tee /dev/stderr | grep -q authenticated'
# The I/O queues authenticate too: the target refuses I/O on a queue that has not, so fio
# passing is the proof.
check fio-verify bash -c 'fio --name=v --filename=$(dev) --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k --size=16M --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1'
check disconnect bash -c 'nvme disconnect -n $NQN && gone_dev'
check reconnect-after-disconnect bash -c 'conn --dhchap-secret="$KEY1" && wait_dev && fio --name=r --filename=$(dev) --ioengine=io_uring --direct=1 --rw=randrw --bs=4k --size=4M --iodepth=4 --verify=crc32c --verify_fatal=1'
check disconnect-again bash -c 'nvme disconnect -n $NQN && gone_dev'
check wrong-secret-refused bash -c '! conn --dhchap-secret="$WRONG"; gone_dev'
check no-secret-refused bash -c '! conn; gone_dev'
check bidirectional-connect bash -c 'conn --hostnqn=$HOST2 --dhchap-secret="$KEY2" --dhchap-ctrl-secret="$CKEY2" && wait_dev'
check bidirectional-io bash -c 'dd if=/dev/urandom of=/tmp/w bs=1M count=4 2>/dev/null && dd if=/tmp/w of=$(dev) bs=1M oflag=direct 2>/dev/null && dd if=$(dev) of=/tmp/r bs=1M count=4 iflag=direct 2>/dev/null && cmp /tmp/w /tmp/r'
check bidirectional-disconnect bash -c 'nvme disconnect -n $NQN && gone_dev'
check wrong-ctrl-secret-refused bash -c '! conn --hostnqn=$HOST2 --dhchap-secret="$KEY2" --dhchap-ctrl-secret="$CWRONG"; gone_dev'
# The same subsystem over NVMe/RDMA (Soft-RoCE): the transaction's messages travel by
# RDMA READ and WRITE instead of in PDUs.
if [ ${#RDMA_ARGS[@]} -gt 0 ]; then
  export RA
  rconn() { nvme connect -t rdma -n $NQN -a $RA -s 4420 --ctrl-loss-tmo=5 --reconnect-delay=1 "$@"; }
  rio() { dd if=/dev/urandom of=/tmp/w bs=64k count=16 2>/dev/null && dd if=/tmp/w of=$(dev) bs=64k oflag=direct 2>/dev/null &&
    dd if=$(dev) of=/tmp/r bs=64k count=16 iflag=direct 2>/dev/null && cmp /tmp/w /tmp/r; }
  export -f rconn rio
  AUTHED=$(dmesg | grep -c "qid 0: authenticated"); export AUTHED
  check rdma-connect-good-secret bash -c 'rconn --dhchap-secret="$KEY1" && wait_dev && grep -qx rdma /sys/class/nvme/*/transport'
  check rdma-kernel-says-authenticated bash -c '[ "$(dmesg | grep -c "qid 0: authenticated")" -gt "$AUTHED" ]'
  check rdma-io rio
  check rdma-disconnect bash -c 'nvme disconnect -n $NQN && gone_dev'
  check rdma-wrong-secret-refused bash -c '! rconn --dhchap-secret="$WRONG"; gone_dev'
  check rdma-no-secret-refused bash -c '! rconn; gone_dev'
  check rdma-bidirectional bash -c 'rconn --hostnqn=$HOST2 --dhchap-secret="$KEY2" --dhchap-ctrl-secret="$CKEY2" && wait_dev && rio && nvme disconnect -n $NQN && gone_dev'
else
  fail=$((fail+1)); echo "E2E FAIL rdma-soft-roce-setup"
fi
check target-alive kill -0 $TGT_PID
dmesg | grep -E "nvme|auth" | tail -15 | sed 's/^/E2E dmesg /'
tail -5 /tmp/tgt.log | sed 's/^/E2E tgt /'
echo "nvme-auth e2e: $pass passed, $fail failed"
echo "E2E guest seconds: $(( $(cut -d. -f1 /proc/uptime) - G0 ))"
echo "E2E-DONE fail=$fail"
poweroff -f
INIT
guest_initrd_pack

guest_run 900 1024
guest_verdict "nvme-auth e2e" "E2E|nvme-auth e2e"
