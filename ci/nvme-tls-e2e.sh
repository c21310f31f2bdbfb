#!/usr/bin/env bash
# End-to-end check of baton's NVMe/TCP TLS (secure channel, TLS 1.3 with a PSK) with the
# Linux kernel's nvme-tcp initiator in a QEMU guest running Debian's 6.12 kernel (6.1 has
# no NVMe/TCP TLS). The kernel hands the handshake to tlshd (ktls-utils) in user space,
# which Debian 12 does not package: Debian 13's binary is fetched once from Debian's
# archive with the libraries it needs (ci/debian-binary.sh), cached under $WORK/tlshd and
# put into the guest's initramfs beside its own loader.
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
  autoconf automake libtool pkg-config make gcc debian-archive-keyring
# The 6.12 kernel tree the DH-HMAC-CHAP test unpacked, if it is there (saves a download).
AUTH_WORK=${E2E_AUTH_WORK:-/tmp/baton-auth-e2e}
[ -e "$WORK/kernel" ] || [ ! -d "$AUTH_WORK/kernel" ] || ln -s "$AUTH_WORK/kernel" "$WORK/kernel"
guest_kernel "${TLS_KERNEL_PKG:-linux-image-6.12.100+deb12-amd64}"

# tlshd. Debian 12 does not package ktls-utils, and its source is in no package registry
# reachable here, but Debian 13 ships it as a binary: that .deb and the Debian 13 libraries
# it needs (its own glibc and GnuTLS 3.8 included) are downloaded once from Debian's
# archive with a private apt configuration (the host's apt state is not touched), unpacked
# under $WORK/tlshd, and run in the guest by Debian 13's own loader. KTLS_UTILS_SRC (a git
# directory of github.com/oracle/ktls-utils with tag ktls-utils-1.1.0) builds it from
# source instead.
TLSHD_ROOT=$WORK/tlshd
if [ ! -e "$TLSHD_ROOT/ready" ]; then
  rm -rf "$TLSHD_ROOT" && mkdir -p "$TLSHD_ROOT"
  if [ -n "${KTLS_UTILS_SRC:-}" ]; then
    rm -rf "$WORK/ktls-src" && mkdir -p "$WORK/ktls-src"
    git --git-dir="$KTLS_UTILS_SRC" archive ktls-utils-1.1.0 | tar -x -C "$WORK/ktls-src"
    (cd "$WORK/ktls-src" && ./autogen.sh && ./configure --prefix="$TLSHD_ROOT/src" &&
      make -j"$(nproc)" && make install) > "$WORK/tlshd-build.log" 2>&1 || {
      tail -20 "$WORK/tlshd-build.log"
      exit 1
    }
  else
    ci/debian-binary.sh trixie "$TLSHD_ROOT/deb" ktls-utils
  fi
  touch "$TLSHD_ROOT/ready"
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
if [ -d "$TLSHD_ROOT/src" ]; then
  guest_file "$TLSHD_ROOT/src/sbin/tlshd" tlshd
else
  # Debian 13's tlshd with its own loader and libraries, kept apart from the guest's.
  mkdir -p "$IRD/opt/tlshd"
  cp -a "$TLSHD_ROOT/deb/usr/sbin/tlshd" "$TLSHD_ROOT/deb/usr/lib/x86_64-linux-gnu" "$IRD/opt/tlshd/"
  rm -rf "$IRD/opt/tlshd/x86_64-linux-gnu/gconv"
  printf '#!/bin/bash\nexec /opt/tlshd/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path /opt/tlshd/x86_64-linux-gnu /opt/tlshd/tlshd "$@"\n' \
    > "$IRD/bin/tlshd"
  chmod 755 "$IRD/bin/tlshd"
fi
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
