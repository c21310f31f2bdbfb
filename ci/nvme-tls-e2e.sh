#!/usr/bin/env bash
# End-to-end check of baton's NVMe/TCP TLS (secure channel, TLS 1.3 with a PSK) with the
# Linux kernel's nvme-tcp initiator in a QEMU guest running Debian's 6.12 kernel (6.1 has
# no NVMe/TCP TLS). The kernel hands the handshake to tlshd (ktls-utils) in user space,
# which Debian 12 does not package: it is built here from source once and cached under
# $WORK/tlshd (source: KTLS_UTILS_SRC, a git directory, or the tool library's mirror of
# github.com/oracle/ktls-utils), then put into the guest's initramfs with its libraries.
#
# Keys as an admin makes them: `nvme gen-tls-key` (interchange format) for baton's key
# files. Debian 12's nvme-cli 2.3 can neither insert TLS keys (`check-tls-key --insert`)
# nor connect with `--tls`, so the guest inserts the TLS PSK with keyctl under the
# identity `NVMe0R01 <hostnqn> <subnqn>`, and connects by writing the options (with `tls`)
# to /dev/nvme-fabrics. The TLS PSK is derived here with `openssl kdf` (HKDF), not with
# baton, so the kernel test also checks baton's derivation against an independent one.
#
# Checks (guest loopback only): TLS connect, fio with crc32c verify, mkfs.ext4 / mount /
# write / read back / e2fsck, disconnect; a host whose keyring holds a wrong key is
# refused; a plaintext connect to the secure listener is refused; the target survives.
# Prints "nvme-tls e2e: N passed, M failed". Needs root (apt-get) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${E2E_TLS_WORK:-/tmp/baton-tls-e2e}
mkdir -p "$WORK"
T0=$(date +%s)

# shellcheck source=ci/guest-lib.sh
. ci/guest-lib.sh
guest_packages "nvme-tls e2e" qemu-system-x86 busybox-static kmod cpio nvme-cli fio xz-utils e2fsprogs \
  keyutils openssl xxd git libgnutls28-dev libkeyutils-dev libglib2.0-dev libnl-3-dev libnl-genl-3-dev \
  autoconf automake libtool pkg-config make gcc
# The 6.12 kernel tree the DH-HMAC-CHAP test unpacked, if it is there (saves a download).
AUTH_WORK=${E2E_AUTH_WORK:-/tmp/baton-auth-e2e}
[ -e "$WORK/kernel" ] || [ ! -d "$AUTH_WORK/kernel" ] || ln -s "$AUTH_WORK/kernel" "$WORK/kernel"
guest_kernel "${TLS_KERNEL_PKG:-linux-image-6.12.100+deb12-amd64}"

# tlshd, built once (ktls-utils 1.1.0: builds with Debian 12's GnuTLS 3.7). Its source is a
# git directory: KTLS_UTILS_SRC, else the mirror of github.com/oracle/ktls-utils this
# machine's tool library keeps. Debian ships it only as a binary for 13 (no source in the
# registry reachable here), and nothing else outside the package registries may be
# fetched, so without a source the test says SKIPPED and why, loudly, instead of failing.
TLSHD=$WORK/tlshd/sbin/tlshd
if [ ! -x "$TLSHD" ]; then
  src=${KTLS_UTILS_SRC:-}
  for cand in /work/.mirror/oracle+ktls-utils/repo; do
    [ -n "$src" ] || [ ! -d "$cand" ] || src=$cand
  done
  if [ -z "$src" ]; then
    echo "nvme-tls e2e: SKIPPED: no ktls-utils source for tlshd (set KTLS_UTILS_SRC to a git" >&2
    echo "  directory of github.com/oracle/ktls-utils with tag ktls-utils-1.1.0)" >&2
    exit 0
  fi
  rm -rf "$WORK/ktls-src" && mkdir -p "$WORK/ktls-src"
  git --git-dir="$src" archive ktls-utils-1.1.0 | tar -x -C "$WORK/ktls-src"
  (cd "$WORK/ktls-src" && ./autogen.sh && ./configure --prefix="$WORK/tlshd" --sysconfdir="$WORK/tlshd/etc" &&
    make -j"$(nproc)" && make install) > "$WORK/tlshd-build.log" 2>&1 || {
    tail -20 "$WORK/tlshd-build.log"
    exit 1
  }
fi

CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo build --release -q -p baton-nvme --example nvmf_tgt
TGT=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/nvmf_tgt

NQN=nqn.2016-06.io.baton:tls
HOST1=nqn.2014-08.org.nvmexpress:uuid:baton-tls-host1
HOST2=nqn.2014-08.org.nvmexpress:uuid:baton-tls-host2
KEY1=$(nvme gen-tls-key --hmac=1)
KEY2=$(nvme gen-tls-key --hmac=1)
WRONG2=$(nvme gen-tls-key --hmac=1)

# hkdf_label LEN LABEL CONTEXT: RFC 8446's HkdfLabel, hex.
hkdf_label() {
  local l="tls13 $2"
  printf '%04x%02x%s%02x%s' "$1" "${#l}" "$(printf %s "$l" | od -An -tx1 | tr -d ' \n')" \
    "${#3}" "$(printf %s "$3" | od -An -tx1 | tr -d ' \n')"
}
hkdf() { openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "hexkey:$1" -kdfopt hexsalt: -kdfopt "hexinfo:$2" HKDF | tr -d ':\n'; }
# tls_psk KEY HOSTNQN: the TLS PSK (binary, stdout) of interchange KEY (01) for HOSTNQN and $NQN.
tls_psk() {
  local b64 key retained
  b64=$(echo "$1" | cut -d: -f3)
  key=$(echo "$b64" | base64 -d | head -c 32 | od -An -tx1 | tr -d ' \n')
  retained=$(hkdf "$key" "$(hkdf_label 32 HostNQN "$2")")
  hkdf "$retained" "$(hkdf_label 32 nvme-tls-psk "NVMe0R01 $2 $NQN")" | xxd -r -p
}

guest_initrd_start
guest_bins bash modprobe nvme fio keyctl mkfs.ext4 e2fsck cmp
guest_file "$TGT" nvmf_tgt
guest_file "$TLSHD" tlshd
# kTLS needs gcm(aes): the kernel would load these on demand through /sbin/modprobe.
guest_modules nvme-tcp crc32c_generic tls ext4 gcm ghash-generic
echo "$HOST1" > "$IRD/etc/nvme/hostnqn"
echo "7b3b3e6a-1f2d-4c55-9b8e-ba7000e2e003" > "$IRD/etc/nvme/hostid"
mkdir -p "$IRD/etc/keys"
echo "$KEY1" > "$IRD/etc/keys/host1.key"
echo "$KEY2" > "$IRD/etc/keys/host2.key"
tls_psk "$KEY1" "$HOST1" > "$IRD/etc/keys/host1.psk"
tls_psk "$WRONG2" "$HOST2" > "$IRD/etc/keys/host2-wrong.psk"
chmod 600 "$IRD"/etc/keys/*
printf '[debug]\nloglevel=1\ntls=0\nnl=0\n\n[authenticate]\nkeyrings=.nvme\n' > "$IRD/etc/tlshd.conf"
cat > "$IRD/etc/keys/env" <<ENV
HOST1=$HOST1
HOST2=$HOST2
NQN=$NQN
ENV

cat > "$IRD/init" <<'INIT'
#!/bin/bash
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
echo /bin/modprobe > /proc/sys/kernel/modprobe
for m in crc32c_generic tls gcm ghash_generic nvme-tcp ext4; do modprobe "$m" || echo "E2E: modprobe $m failed"; done
. /etc/keys/env
export HOST1 HOST2 NQN
pass=0; fail=0
G0=$(cut -d. -f1 /proc/uptime)
check() { local name=$1; shift; if "$@" > /tmp/out 2>&1; then pass=$((pass+1)); echo "E2E ok   $name"; else fail=$((fail+1)); echo "E2E FAIL $name"; head -5 /tmp/out; tail -8 /tmp/out; fi; }
tlshd -c /etc/tlshd.conf -s > /tmp/tlshd.log 2>&1 &
nvmf_tgt 127.0.0.1:4420 16 --tls 127.0.0.1:4421 --tls-host "$HOST1=/etc/keys/host1.key" --tls-host "$HOST2=/etc/keys/host2.key" > /tmp/tgt.log 2>&1 &
TGT_PID=$!
for i in $(seq 50); do grep -q ready /tmp/tgt.log && break; sleep 0.2; done
# The TLS PSKs, as an admin inserts them into the kernel's .nvme keyring.
check insert-psk bash -c 'keyctl padd psk "NVMe0R01 $HOST1 $NQN" %:.nvme < /etc/keys/host1.psk && keyctl padd psk "NVMe0R01 $HOST2 $NQN" %:.nvme < /etc/keys/host2-wrong.psk'
dev() { ls /dev/nvme*n1 2>/dev/null | head -1; }
wait_dev() { for i in $(seq 100); do [ -n "$(dev)" ] && return 0; sleep 0.1; done; return 1; }
gone_dev() { for i in $(seq 100); do [ -z "$(dev)" ] && return 0; sleep 0.1; done; return 1; }
# nvme-cli 2.3 has no --tls: the options string, as nvme connect would write it.
fabrics() { echo "transport=tcp,traddr=127.0.0.1,trsvcid=4421,nqn=$NQN,hostnqn=$1,hostid=7b3b3e6a-1f2d-4c55-9b8e-ba7000e2e003,ctrl_loss_tmo=5,reconnect_delay=1$2" > /dev/nvme-fabrics; }
export -f dev wait_dev gone_dev fabrics
check tls-connect bash -c 'fabrics $HOST1 ,tls && wait_dev'
check target-saw-tls bash -c 'grep "TLS 1.3 with" /tmp/tgt.log | tail -1 | tee /dev/stderr | grep -q "NVMe0R01 $HOST1"'
check fio-verify bash -c 'fio --name=v --filename=$(dev) --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k --size=16M --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1'
check mkfs-mount-fsck bash -c 'mkfs.ext4 -q -F $(dev) && mkdir -p /mnt/t && mount -t ext4 $(dev) /mnt/t && dd if=/dev/urandom of=/tmp/w bs=1M count=4 2>/dev/null && cp /tmp/w /mnt/t/w && sync && umount /mnt/t && echo 3 > /proc/sys/vm/drop_caches && mount -t ext4 $(dev) /mnt/t && cmp /tmp/w /mnt/t/w && umount /mnt/t && e2fsck -n -f $(dev)'
check disconnect bash -c 'nvme disconnect -n $NQN && gone_dev'
check wrong-psk-refused bash -c '! fabrics $HOST2 ,tls; gone_dev'
check target-says-why bash -c 'grep -E "TLS handshake with .* failed" /tmp/tgt.log | tail -1 | tee /dev/stderr | grep -q "binder does not verify"'
check plaintext-refused bash -c '! fabrics $HOST1 ""; gone_dev'
check target-refused-plaintext bash -c 'grep -q "requires TLS 1.3 with a PSK" /tmp/tgt.log'
check reconnect-tls bash -c 'fabrics $HOST1 ,tls && wait_dev && dd if=$(dev) of=/dev/null bs=1M count=4 iflag=direct && nvme disconnect -n $NQN && gone_dev'
check target-alive kill -0 $TGT_PID
dmesg | grep -E "nvme|tls|handshake" | tail -12 | sed 's/^/E2E dmesg /'
tail -8 /tmp/tgt.log | sed 's/^/E2E tgt /'
tail -6 /tmp/tlshd.log | sed 's/^/E2E tlshd /'
echo "nvme-tls e2e: $pass passed, $fail failed"
echo "E2E guest seconds: $(( $(cut -d. -f1 /proc/uptime) - G0 ))"
echo "E2E-DONE fail=$fail"
poweroff -f
INIT
guest_initrd_pack

guest_run 600 1024
guest_verdict "nvme-tls e2e" "E2E|nvme-tls e2e"
