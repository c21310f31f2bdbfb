# Shared set-up of the QEMU/TCG guest tests (ci/*-e2e.sh, ci/netem-guest.sh):
# Debian packages, Debian's own kernel unpacked (not installed), and an initramfs of
# busybox, the real bash and kmod, host tools with their libraries and kernel modules.
# Sourced, not run. The caller sets WORK (its own work directory) before calling these.
# shellcheck shell=bash

# guest_packages NAME PKG...: installs the missing Debian packages (needs root then).
guest_packages() {
  local name=$1 p missing=()
  shift
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "$name: needs root to install ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# guest_kernel [PKG]: Debian's current kernel, or the kernel package PKG (e.g. a newer
# linux-image-6.12.* for features 6.1 lacks), under $WORK/kernel; sets KVER and KMOD.
# Kernels that ship compressed modules (.ko.xz, 6.12) get them decompressed once, so the
# initramfs needs no decompressor and depmod indexes plain .ko files.
guest_kernel() {
  local kpkg=${1:-}
  [ -n "$kpkg" ] || kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  KVER=${kpkg#linux-image-}
  if [ ! -d "$WORK/kernel/lib/modules/$KVER" ]; then
    (cd "$WORK" && rm -f linux-image-*.deb && apt-get download "$kpkg" >/dev/null)
    rm -rf "$WORK/kernel" && dpkg -x "$WORK"/linux-image-*.deb "$WORK/kernel"
  fi
  KMOD="$WORK/kernel/lib/modules/$KVER"
  if find "$KMOD" -name '*.ko.xz' -print -quit | grep -q .; then
    find "$KMOD" -name '*.ko.xz' -print0 | xargs -0 -r -P "$(nproc)" -n 64 xz -d -f
    rm -f "$KMOD/modules.dep"
  fi
  [ -f "$KMOD/modules.dep" ] || depmod -b "$WORK/kernel" "$KVER"
}

# guest_initrd_start: a fresh initramfs tree at $WORK/initrd (sets IRD) with busybox.
guest_initrd_start() {
  local a
  IRD="$WORK/initrd"
  rm -rf "$IRD" && mkdir -p "$IRD"/{bin,sbin,etc/nvme,proc,sys,dev,tmp,mnt,run,lib/modules}
  cp /bin/busybox "$IRD/bin/"
  for a in $(/bin/busybox --list); do [ -e "$IRD/bin/$a" ] || ln -s busybox "$IRD/bin/$a"; done
}

# guest_libs FILE: copies FILE's shared libraries (its ldd closure) into the initramfs.
guest_libs() {
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$IRD$(dirname "$lib")"
    cp -Ln "$lib" "$IRD$lib" 2>/dev/null || true
  done
}

# guest_bins PROG...: copies host programs (found in PATH) and their libraries to /bin.
guest_bins() {
  local src dst
  for src in "$@"; do
    src=$(command -v "$src")
    dst="$IRD/bin/$(basename "$src")"
    rm -f "$dst" && cp -L "$src" "$dst"
    guest_libs "$src"
  done
}

# guest_file SRC NAME: copies a built program to /bin/NAME, with its libraries.
guest_file() {
  cp "$1" "$IRD/bin/$2"
  guest_libs "$1"
}

# guest_modules MODULE...: copies the modules and their dependencies, then runs depmod.
guest_modules() {
  local m rel
  mkdir -p "$IRD/lib/modules/$KVER"
  for m in $(modprobe -a -d "$WORK/kernel" -S "$KVER" --show-depends "$@" 2>/dev/null | awk '/^insmod/ {print $2}'); do
    rel=${m#"$WORK/kernel"}
    mkdir -p "$IRD$(dirname "$rel")" && cp "$m" "$IRD$rel"
  done
  cp "$KMOD"/modules.{order,builtin,builtin.modinfo} "$IRD/lib/modules/$KVER/" 2>/dev/null || true
  depmod -b "$IRD" "$KVER"
}

# guest_initrd_pack: writes $IRD (its /init already in place) to $WORK/initrd.gz.
guest_initrd_pack() {
  chmod +x "$IRD/init"
  (cd "$IRD" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.gz"
}

# guest_run TIMEOUT_S MEM_MIB [QEMU-ARG...]: boots $WORK's kernel and initramfs under TCG,
# 2 vCPUs, no network, console to $LOG (sets LOG, T1, T2). GUEST_MACHINE replaces the
# machine type; GUEST_APPEND adds to the kernel command line; QEMU-ARGs add devices.
#
# A kernel that panics before /init printed anything is booted once more: under TCG with two
# vCPUs, Debian's 6.12 kernel has been seen to die of an "Oops: int3" in the idle loop a
# few seconds into boot (a breakpoint of the kernel's own text patching that the other
# vCPU hit), which says nothing about the code under test. A panic after /init started
# (any "E2E" line) is the test's failure and is not retried.
guest_run() {
  local tmo=$1 mem=$2 try
  shift 2
  LOG="$WORK/console.log"
  T1=$(date +%s)
  for try in 1 2; do
    timeout "$tmo" qemu-system-x86_64 -machine "${GUEST_MACHINE:-q35,accel=tcg}" -cpu max -m "$mem" -smp 2 \
      -nic none -nographic -no-reboot "$@" \
      -kernel "$WORK/kernel/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.gz" \
      -append "console=ttyS0 panic=-1 quiet loglevel=4${GUEST_APPEND:+ $GUEST_APPEND}" > "$LOG" 2>&1 || true
    if [ "$try" = 1 ] && grep -aq 'Kernel panic' "$LOG" && ! grep -aq 'E2E' "$LOG"; then
      echo "guest: the kernel panicked before /init ran (console: $(grep -a -m1 -E 'Oops|BUG|panic' "$LOG" | tr -d '\r')); booting once more"
      cp "$LOG" "$LOG.panic"
      continue
    fi
    break
  done
  T2=$(date +%s)
}

# guest_verdict NAME PATTERN: prints the console lines matching PATTERN (from their first
# "E2E" on, dropping the kernel's console prefix), the set-up and guest times, and
# succeeds only when the guest's /init reported "E2E-DONE fail=0".
guest_verdict() {
  grep -aE "$2" "$LOG" | tr -d '\r' | awk '{ i = index($0, "E2E"); print (i > 1 ? substr($0, i) : $0) }' || true
  echo "$1: set-up and build $((T1 - T0)) s, QEMU guest $((T2 - T1)) s"
  grep -aq "E2E-DONE fail=0" "$LOG"
}
